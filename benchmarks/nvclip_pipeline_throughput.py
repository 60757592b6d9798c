"""End-to-end NV-CLIP throughput: the pipeline against the local contract server adding a fixed
latency per request, compared in the same run with

* the preprocessing-only rate: the same pipeline, files and batch size with ``--provider
  thumbnail`` (decode, normalise, resize, encode, store; its 32×32 descriptor costs next to
  nothing);
* the naive client: one image per request, one request at a time, against the same server.

In: a synthetic MIMIC-layout archive it generates (``dicomvec synth``). Out: JSON with images/s
for each and the ratios the issue asks for (nvclip ≥ 20× the naive client, ≥ 80 % of the
preprocessing-only rate). Usage:

    PYTHONPATH=. python benchmarks/nvclip_pipeline_throughput.py [--images 512] [--size 1024x1024]
        [--latency 0.3] [--batch-sizes 64,256] [--workers 1] [--repeats 3]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomvec import synthetic  # noqa: E402
from dicomvec.io.providers.base import EncodedImage, ProviderConfig  # noqa: E402
from dicomvec.io.providers.nvclip import NVClipProvider  # noqa: E402
from dicomvec.pipeline.run import run_ingest  # noqa: E402


class _Server:
    def __init__(self, url: str):
        self.url = url


@contextlib.contextmanager
def server_process(latency: float) -> Iterator[_Server]:
    """The contract server in its own process, as a real endpoint would be (no shared GIL)."""
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "tests.nvclip_server", "--latency",
                             str(latency)], cwd=repo, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        yield _Server(proc.stdout.readline().strip())
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pipeline_rate(work: Path, name: str, files: Path, batch_size: int, workers: int,
                  *extra: str) -> Dict[str, float]:
    summary = run_ingest([
        "--input", str(files / "**" / "*.dcm"),
        "--sink", f"sqlite:///{work}/{name}.db", "--dead-letter", str(work / f"dl-{name}"),
        "--run-id", name, "--batch-size", str(batch_size),
        "--direct_num_workers", str(workers), *extra])
    return {"stored": summary.stored, "dead_lettered": summary.dead_lettered_total,
            "wall_s": round(summary.wall_time_s, 2),
            "img_s": round(summary.stored / summary.wall_time_s, 2)}


def naive_rate(url: str, count: int) -> float:
    """One image per request, sequentially (the earlier public code's client)."""
    naive = NVClipProvider(ProviderConfig("nvclip", {"url": url, "concurrency": 1,
                                                     "request_size": 1,
                                                     "max_requests_per_minute": 0}))
    naive.setup()
    import io

    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(1)
    images = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (224, 224), dtype=np.uint8), "L").save(buf, "PNG")
        images.append(EncodedImage(buf.getvalue(), "image/png"))
    started = time.perf_counter()
    for image in images:
        assert naive.embed_images([image])[0].ok
    elapsed = time.perf_counter() - started
    naive.teardown()
    return count / elapsed


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", default="1024x1024", type=synthetic.parse_size)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds; each configuration's best round is kept (shared "
                             "machines are noisy; rounds interleave the configurations)")
    parser.add_argument("--naive-images", type=int, default=20)
    args = parser.parse_args(argv)
    os.environ.pop("NVIDIA_API_KEY", None)  # self-hosted style server: no key
    batches = [int(b) for b in args.batch_sizes.split(",")]
    best: Dict[str, Dict[str, float]] = {}

    def keep(name: str, run: Dict[str, float]) -> None:
        if name not in best or run["img_s"] > best[name]["img_s"]:
            best[name] = run

    with tempfile.TemporaryDirectory(prefix="nvclip-bench-") as tmp:
        work = Path(tmp)
        synthetic.generate(work / "archive", args.images, args.size, ["native"], 0, 0)
        files = work / "archive" / "files"
        with server_process(args.latency) as server:
            naive = naive_rate(server.url, args.naive_images)
            pipeline_rate(work, "warmup", files, 64, args.workers, "--provider", "thumbnail")
            for round_ in range(args.repeats):
                for batch in batches:
                    keep(f"thumbnail_batch{batch}", pipeline_rate(
                        work, f"t{batch}-{round_}", files, batch, args.workers,
                        "--provider", "thumbnail"))
                    keep(f"nvclip_batch{batch}", pipeline_rate(
                        work, f"n{batch}-{round_}", files, batch, args.workers,
                        "--provider", "nvclip", "--nvclip-url", server.url,
                        "--nvclip-concurrency", str(args.concurrency)))
    result: Dict[str, object] = {"images": args.images, "size": list(args.size),
                                 "latency_s": args.latency, "workers": args.workers,
                                 "repeats": args.repeats,
                                 "naive_client_img_s": round(naive, 2)}
    for batch in batches:
        prep, nv = best[f"thumbnail_batch{batch}"], best[f"nvclip_batch{batch}"]
        nv["vs_naive_client"] = round(nv["img_s"] / naive, 1)
        nv["vs_preprocessing_only"] = round(nv["img_s"] / prep["img_s"], 3)
        result[f"preprocessing_only_batch{batch}"] = prep
        result[f"nvclip_batch{batch}"] = nv
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
