"""NV-CLIP client throughput against the local contract server with a fixed per-request latency.

Measures, in one run and against the same server (default 300 ms added to every request):

* baseline — the naive client: one image per request, one request at a time;
* batched  — ``NVClipProvider.embed_images`` called with one batch of 64 at a time (what a
  DoFn doing one call per GroupIntoBatches batch of 64 gets: one request in flight);
* concurrent — batches of 64 kept in flight ``concurrency`` at a time via ``submit_images``.

Prints images/s for each and the ratios to the baseline. Usage:

    PYTHONPATH=. python benchmarks/nvclip_client_throughput.py [--latency 0.3] [--images 1024]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomvec.io.providers.base import EncodedImage, ProviderConfig  # noqa: E402
from dicomvec.io.providers.nvclip import NVClipProvider  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from tests.nvclip_server import NVClipContractServer  # noqa: E402


def make_images(count: int, size: int) -> List[EncodedImage]:
    """Distinct smooth PNGs about the size of a 224-px radiograph thumbnail."""
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, size * size).reshape(size, size)
    out = []
    for _ in range(count):
        pixels = np.clip(base + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels, "L").save(buf, format="PNG")
        out.append(EncodedImage(buf.getvalue(), "image/png"))
    return out


def provider(url: str, **settings) -> NVClipProvider:
    made = NVClipProvider(ProviderConfig("nvclip", {"url": url, "max_requests_per_minute": 0,
                                                    **settings}))
    made.setup()
    return made


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def run(latency: float, n_images: int, n_baseline: int, concurrency: int) -> Dict[str, float]:
    os.environ.pop("NVIDIA_API_KEY", None)
    images = make_images(n_images, 224)
    with NVClipContractServer(latency_s=latency) as server:
        naive = provider(server.url, concurrency=1, request_size=1)
        started = time.perf_counter()
        for image in images[:n_baseline]:
            assert naive.embed_images([image])[0].ok
        baseline = rate(n_baseline, time.perf_counter() - started)
        naive.teardown()

        batched = provider(server.url, concurrency=concurrency)
        started = time.perf_counter()
        for i in range(0, n_images, 64):
            assert all(r.ok for r in batched.embed_images(images[i:i + 64]))
        one_in_flight = rate(n_images, time.perf_counter() - started)
        batched.teardown()

        pipelined = provider(server.url, concurrency=concurrency)
        started = time.perf_counter()
        futures = [pipelined.submit_images(images[i:i + 64]) for i in range(0, n_images, 64)]
        assert all(r.ok for f in futures for r in f.result())
        concurrent = rate(n_images, time.perf_counter() - started)
        pipelined.teardown()
        max_in_flight = server.max_in_flight
    return {"latency_s": latency, "images": n_images, "baseline_images": n_baseline,
            "concurrency": concurrency, "max_in_flight": max_in_flight,
            "baseline_img_s": round(baseline, 2),
            "batched_img_s": round(one_in_flight, 2),
            "concurrent_img_s": round(concurrent, 2),
            "batched_vs_baseline": round(one_in_flight / baseline, 1),
            "concurrent_vs_baseline": round(concurrent / baseline, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--baseline-images", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    info = machine()
    result = run(args.latency, args.images, args.baseline_images, args.concurrency)
    info["loadavg_end"] = os.getloadavg()
    result["machine"] = info  # commit and load average, for BENCHMARKS.md
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
