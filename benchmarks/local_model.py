"""Local model (``--provider openclip``): CPU images/s of a ViT-B/16 image tower, PyTorch vs ONNX
Runtime, against the pipeline's own preprocessing rate, in one run.

Measured, each configuration in a fresh worker-like process (its peak RSS is that process's own
``VmHWM``; 3 timed repetitions after one warm-up batch, median kept; load average before/after):

* ``preprocess`` (the baseline): the pipeline's part, read_dataset → decode_pixels →
  normalize_pixels → fit_to_square (224) on MIMIC-size synthetic DICOMs (``dicomvec.synthetic``),
  one process pinned to one CPU; CPU ms/image (the per-core cost) and wall;
* ``torch``: the embedder as the provider runs it: the pipeline's 224×224 gray array → PIL
  grayscale → RGB → the model's own open_clip val transform → ``encode_image`` (fp32, random
  weights from a fixed seed), ``torch.set_num_threads`` 1 or 2, batches 16 and 1 (``--batches``;
  64 costs ~4 more minutes on a shared 2-core machine);
* ``onnxruntime``: the same image tower exported by ``torch.onnx.export`` from the same weights,
  run with onnxruntime's CPUExecutionProvider (1 or 2 intra-op threads) in a process that has
  onnxruntime + numpy + Pillow loaded and not torch; the model's transform redone in numpy/PIL
  (what the route would have to ship); its vectors are checked against torch's (max |Δ|).

Per-core rate: images / CPU seconds of the process for 1-thread configurations (robust to the
other jobs on a shared machine), wall images/s beside it. The bottleneck is the slower of
"preprocess" and "embed" per core, and the JSON says by what factor.

    PYTHONPATH=. python -m benchmarks.local_model --json benchmarks/results/local_model.json
    PYTHONPATH=. python -m benchmarks.local_model --device cuda --model ViT-H-14 --precision fp16 \\
        --batches 64,256 --json benchmarks/results/local_model_cuda.json

``--device cuda`` times the torch route on the GPU (host→device copy included) and prints it next
to the reference figure: a ViT-H/14 image tower does ~1,380 img/s on one H100 in fp16.

The embedder is built in one place (``torch_embedder``); when the ``openclip`` provider lands,
that function is the one to point at its ModelHandler.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
#: ViT-H/14 image tower, one H100, fp16 (the issue's reference for a GPU worker)
H100_VIT_H14_FP16_IMG_S = 1380
MIMIC_CXR_IMAGES = 377_110
SEED = 0
#: Install size and time on a fresh machine, measured by the lead on this machine with
#: ``/usr/bin/time -v pip install --no-cache-dir <pkgs>`` into fresh venvs (Python 3.11, pip
#: from PyPI, logs in /work/measure/*-install.log); ``--measure-install`` re-measures.
INSTALL_RECORDED = {
    "torch": {"packages": "torch==2.15.0 open_clip_torch==3.3.0 (pulls the CUDA 13 nvidia-* "
                          "wheels and triton)", "wall_s": 53.0, "venv_mb": 5500,
              "parts_mb": {"torch": 1200, "nvidia": 3000, "triton": 1000},
              "how": "lead: /usr/bin/time -v venv/bin/pip install --no-cache-dir torch "
                     "open_clip_torch into a fresh venv; du -sh venv"},
    "onnxruntime": {"packages": "onnxruntime==1.32.0 (+ numpy, protobuf, flatbuffers)",
                    "wall_s": 5.3, "venv_mb": 180,
                    "how": "lead: /usr/bin/time -v venv/bin/pip install --no-cache-dir "
                           "onnxruntime into a fresh venv; du -sh venv"},
    "torch_without_nvidia": "pip install --no-deps torch does not import (ValueError: "
                            "libcublasLt.so not found); the CPU-only wheel index "
                            "(download.pytorch.org) is not reachable from this machine",
}


# --------------------------------------------------------------------------- memory


def memory_mb() -> Dict[str, Optional[float]]:
    """This process's RSS now, split into anonymous memory (its own: weights, activations) and
    file-backed pages (shared libraries, shared with every other process that maps them), and
    its peak RSS (``VmHWM``)."""
    return {"rss": status_mb("VmRSS"), "anon": status_mb("RssAnon"),
            "file": status_mb("RssFile"), "peak": status_mb("VmHWM")}


def status_mb(field: str) -> Optional[float]:
    """``VmRSS`` / ``VmHWM`` of this process in MB (duplicated from benchmarks.common so that the
    onnxruntime child imports nothing but onnxruntime, numpy and Pillow)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        import resource
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return None


# --------------------------------------------------------------------------- embedders


class Embedder(NamedTuple):
    """``prepare``: one 2-D uint8 gray array → the model's input for one image; ``infer``: a list
    of prepared inputs → (n, dim) float32 vectors (numpy); ``model``: the torch model, if any."""
    prepare: Callable
    infer: Callable
    info: Dict[str, object]
    model: object = None


def torch_embedder(model_name: str, device: str, precision: str, threads: int,
                   model_config: Optional[str] = None) -> Embedder:
    """The openclip route: open_clip's ``create_model_and_transforms`` (random weights, fixed
    seed), the model's own val transform after PIL grayscale → RGB, ``encode_image`` under
    ``inference_mode``: the operations of the ``openclip`` provider's ``preprocess`` and
    ``OpenClipModelHandler.run_inference``, built here so that fp16 on CUDA can be timed too."""
    import open_clip
    import torch
    from PIL import Image

    torch.set_num_threads(threads)
    if model_config:  # an architecture of the user's: registered under the file's stem
        open_clip.add_model_config(model_config)
    torch.manual_seed(SEED)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    model.eval()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    model = model.to(device=device, dtype=dtype)

    def prepare(gray):
        return preprocess(Image.fromarray(gray, mode="L").convert("RGB"))

    def infer(prepared):
        with torch.inference_mode():
            batch = torch.stack(prepared).to(device=device, dtype=dtype, non_blocking=True)
            out = model.encode_image(batch).float()
            return out.cpu().numpy()  # waits for the device

    params = {"params_total_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
              "params_image_tower_m": round(sum(p.numel() for p in model.visual.parameters())
                                            / 1e6, 1)}
    return Embedder(prepare, infer, {**params, "torch": torch.__version__,
                                     "open_clip": open_clip.__version__,
                                     "threads": torch.get_num_threads(),
                                     "transform": repr(preprocess).replace("\n", " ")}, model)


def numpy_transform(meta: Dict) -> Callable:
    """open_clip's val transform (resize the short side with bicubic, centre crop, scale to
    [0, 1], normalize by the model's mean/std) in PIL + numpy: what an ONNX Runtime worker, which
    has no torchvision, would run instead. ``meta`` comes from the export."""
    import numpy as np
    from PIL import Image

    size = int(meta["size"])
    mean = np.asarray(meta["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(meta["std"], dtype=np.float32).reshape(3, 1, 1)

    def prepare(gray):
        image = Image.fromarray(gray, mode="L").convert("RGB")
        w, h = image.size
        if min(w, h) != size:  # torchvision Resize(int): the short side to size, aspect kept
            scale = size / min(w, h)
            image = image.resize((max(size, int(w * scale)), max(size, int(h * scale))),
                                 Image.Resampling.BICUBIC)
        w, h = image.size
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
        x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return (x - mean) / std

    return prepare


def ort_embedder(onnx_path: str, meta: Dict, threads: int) -> Embedder:
    """The ONNX Runtime route: CPUExecutionProvider, ``threads`` intra-op threads."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def infer(prepared):
        return session.run(None, {name: np.stack(prepared).astype(np.float32)})[0]

    return Embedder(numpy_transform(meta), infer, {"onnxruntime": ort.__version__,
                                                   "threads": threads})


# --------------------------------------------------------------------------- children


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def time_embedder(embedder: Embedder, grays: List, batch: int, repeats: int,
                  sync: Callable = lambda: None) -> Dict[str, object]:
    """Prepare CPU/wall ms per image; infer: one warm-up call, then ``repeats`` timed rounds of
    at least 16 images in calls of ``batch`` (median img/s, wall and per CPU second)."""
    prep_cpu, prep_wall = [], []
    for gray in grays:  # warm-up of the transform on the first image is negligible
        c, w = time.process_time(), time.perf_counter()
        embedder.prepare(gray)
        prep_cpu.append((time.process_time() - c) * 1000)
        prep_wall.append((time.perf_counter() - w) * 1000)
    prepared = [embedder.prepare(grays[i % len(grays)]) for i in range(batch)]
    calls = max(1, -(-16 // batch))
    embedder.infer(prepared)  # warm-up: allocator, kernels, one-off graph optimisation
    sync()
    wall_rates, cpu_rates = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        for _ in range(calls):
            embedder.infer(prepared)
        sync()
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        wall_rates.append(calls * batch / wall)
        cpu_rates.append(calls * batch / cpu)
    return {"batch": batch, "images_per_round": calls * batch, "repeats": repeats,
            "img_s_wall": round(_median(wall_rates), 2),
            "img_s_per_cpu_s": round(_median(cpu_rates), 2),
            "img_s_wall_rounds": [round(r, 2) for r in wall_rates],
            "prepare_cpu_ms": round(_median(prep_cpu), 2),
            "prepare_wall_ms": round(_median(prep_wall), 2)}


def child_torch(spec: Dict) -> Dict:
    import numpy as np
    import open_clip  # noqa: F401  (imports apart from the model's load time and memory)
    import torch
    grays = list(np.load(spec["grays"])["grays"])
    rss_imported = status_mb("VmRSS")
    memory_imported = memory_mb()
    t0 = time.perf_counter()
    embedder = torch_embedder(spec["model"], spec["device"], spec["precision"], spec["threads"],
                              spec.get("model_config"))
    load_s = time.perf_counter() - t0
    rss_loaded = status_mb("VmRSS")
    sync = lambda: None  # noqa: E731  (infer already copies the result to the host)
    out = {"route": "torch", "load_s": round(load_s, 2), "rss_after_import_mb": rss_imported,
           "rss_after_load_mb": rss_loaded, "memory_after_import_mb": memory_imported,
           "memory_after_load_mb": memory_mb(), **embedder.info, "runs": {}}
    for batch in spec["batches"]:
        out["runs"][str(batch)] = time_embedder(embedder, grays, batch, spec["repeats"], sync)
    out["peak_rss_mb"] = status_mb("VmHWM")
    out["memory_end_mb"] = memory_mb()
    if spec["device"].startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def child_export(spec: Dict) -> Dict:
    """Export the image tower (same seed → same random weights) to ONNX; keep a reference input
    (the torch transform of the first images) and torch's vectors for it."""
    import numpy as np
    import torch

    grays = list(np.load(spec["grays"])["grays"])
    embedder = torch_embedder(spec["model"], "cpu", "fp32", spec["threads"],
                              spec.get("model_config"))
    model = embedder.model

    class ImageTower(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, pixels):
            return self.clip.encode_image(pixels)

    tower = ImageTower(model).eval()
    prepared = [embedder.prepare(g) for g in grays[:spec["check_images"]]]
    reference = torch.stack(prepared)
    t0 = time.perf_counter()
    with torch.inference_mode():
        torch_vectors = embedder.infer(prepared)
        same_weights = float(np.abs(tower(reference).numpy() - torch_vectors).max())
    export_kwargs = dict(input_names=["pixels"], output_names=["vectors"],
                         dynamic_axes={"pixels": {0: "batch"}, "vectors": {0: "batch"}},
                         opset_version=17)
    try:
        torch.onnx.export(tower, (reference[:2],), spec["onnx"], dynamo=False,
                          **export_kwargs)
        exporter = "torchscript"
    except TypeError:  # an older torch without the dynamo switch
        torch.onnx.export(tower, (reference[:2],), spec["onnx"], **export_kwargs)
        exporter = "torchscript"
    export_s = time.perf_counter() - t0
    cfg = model.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    meta = {"size": size, "mean": list(cfg["mean"]), "std": list(cfg["std"]),
            "interpolation": cfg.get("interpolation"), "resize_mode": cfg.get("resize_mode")}
    np.savez(spec["reference"], pixels=reference.numpy(), vectors=torch_vectors)
    Path(spec["meta"]).write_text(json.dumps(meta))
    return {"route": "export", "exporter": exporter, "export_s": round(export_s, 2),
            "onnx_mb": round(Path(spec["onnx"]).stat().st_size / 1e6, 1), "meta": meta,
            "torch_vs_tower_max_abs": same_weights, "dim": int(torch_vectors.shape[1]),
            "peak_rss_mb": status_mb("VmHWM")}


def child_ort(spec: Dict) -> Dict:
    import numpy as np
    import onnxruntime  # noqa: F401  (imports apart from the model's load time and memory)
    from PIL import Image  # noqa: F401
    grays = list(np.load(spec["grays"])["grays"])
    meta = json.loads(Path(spec["meta"]).read_text())
    rss_imported = status_mb("VmRSS")
    memory_imported = memory_mb()
    t0 = time.perf_counter()
    embedder = ort_embedder(spec["onnx"], meta, spec["threads"])
    load_s = time.perf_counter() - t0
    out = {"route": "onnxruntime", "load_s": round(load_s, 2),
           "rss_after_import_mb": rss_imported, "rss_after_load_mb": status_mb("VmRSS"),
           "memory_after_import_mb": memory_imported, "memory_after_load_mb": memory_mb(),
           **embedder.info, "runs": {}}
    ref = np.load(spec["reference"])
    ort_vectors = embedder.infer(list(ref["pixels"]))
    out["max_abs_vs_torch"] = float(np.abs(ort_vectors - ref["vectors"]).max())
    out["max_abs_vs_torch_rel"] = out["max_abs_vs_torch"] / float(np.abs(ref["vectors"]).max())
    own = np.stack([embedder.prepare(g) for g in grays[:len(ref["pixels"])]])
    out["numpy_transform_max_abs_vs_torch_transform"] = float(np.abs(own - ref["pixels"]).max())
    for batch in spec["batches"]:
        out["runs"][str(batch)] = time_embedder(embedder, grays, batch, spec["repeats"])
    out["peak_rss_mb"] = status_mb("VmHWM")
    out["memory_end_mb"] = memory_mb()
    out["torch_loaded"] = "torch" in sys.modules
    out["modules_loaded"] = sorted({m.split(".")[0] for m in sys.modules
                                    if m.split(".")[0] in ("torch", "onnxruntime", "numpy",
                                                           "PIL", "open_clip", "torchvision")})
    return out


def child_preprocess(spec: Dict) -> Dict:
    """The pipeline's own part, per image: read → decode (reduced) → normalize → fit to 224."""
    import numpy as np
    from dicomvec import imaging
    from dicomvec.imaging.encoding import fit_to_square

    size = spec["size"]

    def once(path):
        with open(path, "rb") as stream:
            ds = imaging.read_dataset(stream)
        gray = imaging.normalize_pixels(ds, imaging.decode_pixels(ds, size))
        return fit_to_square(gray, size)

    grays = [once(p) for p in spec["paths"]]  # warm-up: imports, page cache
    cpu_ms, wall_ms = [], []
    for _ in range(spec["repeats"]):
        for path in spec["paths"]:
            c, w = time.process_time(), time.perf_counter()
            once(path)
            cpu_ms.append((time.process_time() - c) * 1000)
            wall_ms.append((time.perf_counter() - w) * 1000)
    np.savez(spec["grays"], grays=np.stack(grays))
    return {"route": "preprocess", "images": len(spec["paths"]), "repeats": spec["repeats"],
            "cpu_ms": round(_median(cpu_ms), 2), "wall_ms": round(_median(wall_ms), 2),
            "img_s_per_core": round(1000 / _median(cpu_ms), 1),
            "peak_rss_mb": status_mb("VmHWM")}


CHILDREN = {"torch": child_torch, "export": child_export, "onnxruntime": child_ort,
            "preprocess": child_preprocess}


def run_child(kind: str, spec: Dict, cpu: Optional[int], env: Optional[Dict] = None) -> Dict:
    """``kind`` in a fresh interpreter (pinned to ``cpu`` unless None); its JSON, with the load
    average before and after and the wall time of the whole process."""
    spec = {**spec, "cpu": cpu}
    before, t0 = os.getloadavg(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.local_model", "--child", kind,
                           "--spec", json.dumps(spec)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    if done.returncode:
        raise RuntimeError(f"{kind} child failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out.update({"loadavg_before": [round(x, 2) for x in before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "process_wall_s": round(time.perf_counter() - t0, 1), "pinned_cpu": cpu})
    return out


# --------------------------------------------------------------------------- install


def _tree_mb(root: Path) -> float:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return round(total / 1e6, 1)


def measure_install(work: Path, routes: Sequence[str]) -> Dict:
    """``pip install --no-cache-dir`` of each route into a fresh venv: wall s and venv MB."""
    packages = {"onnxruntime": ["onnxruntime"], "torch": ["torch", "open_clip_torch"]}
    out = {}
    for route in routes:
        venv = work / f"venv-{route}"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        base = _tree_mb(venv)
        t0 = time.perf_counter()
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-cache-dir",
                        *packages[route]], check=True, env=clean)
        out[route] = {"packages": " ".join(packages[route]),
                      "wall_s": round(time.perf_counter() - t0, 1),
                      "venv_mb": _tree_mb(venv), "empty_venv_mb": base,
                      "how": "this script: python -m venv; pip install --no-cache-dir"}
    return out


# --------------------------------------------------------------------------- main


def _rate(run: Dict, threads: int) -> float:
    """Per-core images/s: per CPU second for one thread; wall / threads otherwise."""
    return run["img_s_per_cpu_s"] if threads == 1 else run["img_s_wall"] / threads


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model name (random "
                        "weights); ViT-H-14 for the H100 comparison")
    parser.add_argument("--model-config", help="an open_clip model config JSON to time "
                        "instead (random weights; --model defaults to its file name's stem)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (torch route only)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    parser.add_argument("--batches", default="16,1",
                        help="batch sizes for torch with one thread (the first is also run "
                             "with 2 threads and on onnxruntime)")
    parser.add_argument("--threads", default="1,2", help="thread counts for the first batch")
    parser.add_argument("--images", type=int, default=20, help="MIMIC-size synthetic DICOMs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=0,
                        help="CPU that 1-thread processes are pinned to (-1: not pinned)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime route")
    parser.add_argument("--measure-install", default="",
                        help="comma-separated routes (onnxruntime,torch) to pip-install into "
                             "fresh venvs and measure (torch: ~1 min, 5.5 GB of disk)")
    parser.add_argument("--cache", default=str(REPO / ".cache" / "bench-local-model"))
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.spec)
        if spec.get("cpu") is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {spec["cpu"]})
        print(json.dumps(CHILDREN[args.child](spec)))
        return 0

    from benchmarks.common import cached_archive, dicom_paths, machine
    from dicomvec.synthetic import MIMIC_SIZE

    if args.model_config:
        args.model_config = str(Path(args.model_config).resolve())
        if args.model == parser.get_default("model"):
            args.model = Path(args.model_config).stem
    info = machine()
    cuda = args.device.startswith("cuda")
    pin = None if args.cpu < 0 else args.cpu
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GiB; commit "
          f"{info['commit']}; load average at start {info['loadavg_start']}", flush=True)
    root = cached_archive(Path(args.cache), args.images, MIMIC_SIZE, ("native",), seed=0)
    paths = [str(p) for p in dicom_paths(root)]
    result: Dict[str, object] = {"machine": info, "model": args.model, "device": args.device,
                                 "precision": args.precision, "image_size": 224,
                                 "images": len(paths), "repeats": args.repeats,
                                 "configs": {}}
    configs = result["configs"]

    def show(name: str, row: Dict) -> None:
        print(f"  {name:28s} load {row['loadavg_before'][0]:.2f}→{row['loadavg_after'][0]:.2f}"
              f"  peak RSS {row.get('peak_rss_mb')} MB", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-local-model-") as tmp:
        work = Path(tmp)
        common = {"grays": str(work / "grays.npz"), "model": args.model,
                  "model_config": args.model_config,
                  "repeats": args.repeats, "onnx": str(work / "tower.onnx"),
                  "meta": str(work / "meta.json"), "reference": str(work / "reference.npz")}
        configs["preprocess"] = run_child("preprocess", {**common, "paths": paths, "size": 224},
                                          pin)
        show("preprocess", configs["preprocess"])
        if cuda:
            name = f"torch {args.device} {args.precision}"
            configs[name] = run_child("torch", {**common, "device": args.device,
                                                "precision": args.precision, "threads": 1,
                                                "batches": batches}, None)
            show(name, configs[name])
        else:
            if not args.no_onnx:
                configs["export"] = run_child("export", {**common, "threads": 2,
                                                         "check_images": 16}, None)
                show("export", configs["export"])
            first = batches[0]
            for n in threads:  # torch and onnxruntime alternate, so load changes hit both
                cpu = pin if n == 1 else None
                name = f"torch {n}t"
                configs[name] = run_child("torch", {**common, "device": "cpu",
                                                    "precision": "fp32", "threads": n,
                                                    "batches": [first] + (batches[1:] if n == 1
                                                                          else [])}, cpu)
                show(name, configs[name])
                if not args.no_onnx:
                    name = f"onnxruntime {n}t"
                    configs[name] = run_child("onnxruntime", {**common, "threads": n,
                                                              "batches": [first]}, cpu)
                    show(name, configs[name])
        if args.measure_install:
            result["install_measured"] = measure_install(work, args.measure_install.split(","))
    result["install_recorded"] = INSTALL_RECORDED
    info["loadavg_end"] = os.getloadavg()
    result["summary"] = summarize(result, batches[0], cuda)
    report(result, batches[0], cuda)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def summarize(result: Dict, batch: int, cuda: bool) -> Dict:
    """Per-core rates, the bottleneck and by how much, the projection to MIMIC-CXR."""
    configs = result["configs"]
    prep = configs["preprocess"]["img_s_per_core"]
    summary: Dict[str, object] = {"preprocess_img_s_per_core": prep, "routes": {}}
    for name, row in configs.items():
        if "runs" not in row:
            continue
        run = row["runs"][str(batch)]
        n = row.get("threads", 1)
        if cuda:  # every batch size: the GPU's rate depends on it
            for size, gpu_run in row["runs"].items():
                embed = gpu_run["img_s_wall"]
                core_s_per_image = 1 / prep + gpu_run["prepare_cpu_ms"] / 1000  # + transform
                summary["routes"][f"{name} batch {size}"] = {
                    "img_s": embed,
                    "reference_h100_vit_h14_fp16_img_s": H100_VIT_H14_FP16_IMG_S,
                    "cpu_cores_to_feed_it": round(embed * core_s_per_image, 2),
                    "mimic_cxr_hours": round(MIMIC_CXR_IMAGES / embed / 3600, 2)}
            continue
        infer = _rate(run, n)
        # the model transform runs per image on the worker's cores, before the inference
        # (CPU ms with one thread; wall ms × threads otherwise: idle OpenMP threads spin)
        prepare_ms = run["prepare_cpu_ms"] if n == 1 else run["prepare_wall_ms"] * n
        per_core = 1 / (1 / infer + prepare_ms / 1000)
        summary["routes"][name] = {
            "threads": n, "batch": batch, "infer_img_s_per_core": round(infer, 2),
            "prepare_core_ms": round(prepare_ms, 2),
            "embed_img_s_per_core": round(per_core, 2),
            "img_s_wall": run["img_s_wall"], "peak_rss_mb": row["peak_rss_mb"],
            "anon_rss_end_mb": row["memory_end_mb"]["anon"],
            "bottleneck": "embedding" if per_core < prep else "preprocessing",
            "embed_vs_preprocess_cost": round(prep / per_core, 1),
            "pipeline_img_s_per_core": round(1 / (1 / prep + 1 / per_core), 2),
            "mimic_cxr_core_hours": round(MIMIC_CXR_IMAGES / (1 / (1 / prep + 1 / per_core))
                                          / 3600, 1)}
        summary["routes"][name]["mimic_cxr_hours_on_cores"] = {
            str(c): round(summary["routes"][name]["mimic_cxr_core_hours"] / c, 1)
            for c in (2, 8, 32, 64)}
    if not cuda and "torch 1t" in summary["routes"] and "onnxruntime 1t" in summary["routes"]:
        t, o = summary["routes"]["torch 1t"], summary["routes"]["onnxruntime 1t"]
        summary["onnxruntime_vs_torch_1t_infer"] = round(
            o["infer_img_s_per_core"] / t["infer_img_s_per_core"], 2)
        summary["onnxruntime_vs_torch_1t_peak_rss"] = round(o["peak_rss_mb"] / t["peak_rss_mb"],
                                                            2)
    return summary


def report(result: Dict, batch: int, cuda: bool) -> None:
    configs, summary = result["configs"], result["summary"]
    prep = configs["preprocess"]
    print(f"\npreprocess (read → decode → normalize → fit 224), one core: {prep['cpu_ms']} ms "
          f"CPU/image = {prep['img_s_per_core']} img/s per core; peak RSS "
          f"{prep['peak_rss_mb']} MB")
    if "export" in configs:
        e = configs["export"]
        print(f"ONNX export: {e['export_s']} s, {e['onnx_mb']} MB, {e['dim']}-d")
    for name, row in configs.items():
        if "runs" not in row:
            continue
        extra = (f"  max |Δ| vs torch {row['max_abs_vs_torch']:.2e}, numpy transform vs "
                 f"torch's {row['numpy_transform_max_abs_vs_torch_transform']:.2e}, torch "
                 f"loaded: {row['torch_loaded']}" if "max_abs_vs_torch" in row else "")
        print(f"\n{name}: load {row['load_s']} s, RSS after imports "
              f"{row.get('rss_after_import_mb')} MB, after load {row['rss_after_load_mb']} MB, "
              f"peak {row['peak_rss_mb']} MB{extra}")
        for b, run in row["runs"].items():
            print(f"  batch {b:>3}: {run['img_s_wall']:7.2f} img/s wall, "
                  f"{run['img_s_per_cpu_s']:7.2f} img/s per CPU s; transform "
                  f"{run['prepare_cpu_ms']} ms CPU/image")
    print()
    if cuda:
        for name, row in summary["routes"].items():
            print(f"{name}: {row['img_s']} img/s (reference: ViT-H/14 image tower, one H100, "
                  f"fp16: ~{H100_VIT_H14_FP16_IMG_S} img/s); {row['cpu_cores_to_feed_it']} CPU "
                  f"cores of preprocessing + transform to keep it fed; MIMIC-CXR in "
                  f"{row['mimic_cxr_hours']} h")
        return
    print("| route | threads | batch | infer img/s per core | transform ms | embed img/s per "
          "core | wall img/s | peak RSS MB | bottleneck (×) | MIMIC-CXR core-hours |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for name, r in summary["routes"].items():
        print(f"| {name} | {r['threads']} | {r['batch']} | {r['infer_img_s_per_core']} | "
              f"{r['prepare_core_ms']} | {r['embed_img_s_per_core']} | {r['img_s_wall']} | "
              f"{r['peak_rss_mb']} | {r['bottleneck']} (×{r['embed_vs_preprocess_cost']}) | "
              f"{r['mimic_cxr_core_hours']} |")
    for key in ("onnxruntime_vs_torch_1t_infer", "onnxruntime_vs_torch_1t_peak_rss"):
        if key in summary:
            print(f"{key}: {summary[key]}")
    print(f"load average at end {result['machine']['loadavg_end']}")


if __name__ == "__main__":
    sys.exit(main())
