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
        [--latency 0.3] [--batch-sizes 64,256] [--workers 1] [--repeats 3] [--cache DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomvec import synthetic  # noqa: E402
from dicomvec.io.providers.base import EncodedImage, ProviderConfig  # noqa: E402
from dicomvec.io.providers.nvclip import NVClipProvider  # noqa: E402
from benchmarks.common import (Rounds, machine, cached_archive, pipeline_rate,  # noqa: E402
                               server_process)


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
    parser.add_argument("--cache", default=None,
                        help="keep the synthetic archive in this folder and reuse it "
                             "(default: a temp folder)")
    args = parser.parse_args(argv)
    info = machine()  # commit and load average at start, for BENCHMARKS.md
    os.environ.pop("NVIDIA_API_KEY", None)  # self-hosted style server: no key
    batches = [int(b) for b in args.batch_sizes.split(",")]
    rounds = Rounds()

    with tempfile.TemporaryDirectory(prefix="nvclip-bench-") as tmp:
        work = Path(tmp)
        files = cached_archive(Path(args.cache) if args.cache else work / "archive",
                               args.images, args.size, ("native",), seed=0) / "files"
        with server_process(args.latency) as server:
            naive = naive_rate(server.url, args.naive_images)
            pipeline_rate(work, "warmup", files, 64, args.workers, "--provider", "thumbnail")
            for round_ in range(args.repeats):
                for batch in batches:
                    rounds.add(f"thumbnail_batch{batch}", pipeline_rate(
                        work, f"t{batch}-{round_}", files, batch, args.workers,
                        "--provider", "thumbnail"))
                    rounds.add(f"nvclip_batch{batch}", pipeline_rate(
                        work, f"n{batch}-{round_}", files, batch, args.workers,
                        "--provider", "nvclip", "--nvclip-url", server.url,
                        "--nvclip-concurrency", str(args.concurrency)))
    info["loadavg_end"] = os.getloadavg()
    result: Dict[str, object] = {"machine": info, "images": args.images, "size": list(args.size),
                                 "latency_s": args.latency, "workers": args.workers,
                                 "repeats": args.repeats,
                                 "naive_client_img_s": round(naive, 2)}
    for batch in batches:
        prep, nv = rounds.best(f"thumbnail_batch{batch}"), rounds.best(f"nvclip_batch{batch}")
        nv["vs_naive_client"] = round(nv["img_s"] / naive, 1)
        nv["vs_preprocessing_only"] = round(nv["img_s"] / prep["img_s"], 3)
        result[f"preprocessing_only_batch{batch}"] = prep
        result[f"nvclip_batch{batch}"] = nv
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
