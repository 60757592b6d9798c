"""``dicomvec check-nvclip``: check an NV-CLIP URL and key before launching a long run.

Steps: (1) ``GET {url}/health/ready`` — 200 ready; 404 tolerated (the hosted API has no such
route); 503 or unreachable is an error. (2) One tiny text embedding through the same client the
pipeline uses (no retries), validated like any other. Prints ``OK ... <dim>-d vector in <ms> ms``
and exits 0, or prints a plain ``dicomvec: error: ...`` line on stderr and exits 2 (as every
command). The key comes from ``NVIDIA_API_KEY`` and is never printed.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional, TextIO

from dicomvec.defaults import CHECK_NVCLIP_TIMEOUT_S, NVCLIP_MODEL, NVCLIP_URL as HOSTED_URL

PROBE_TEXT = "a frontal chest x-ray"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nvclip-url", default=HOSTED_URL,
                        help="NIM base URL ending in /v1 (default: the hosted API)")
    parser.add_argument("--nvclip-model", default=NVCLIP_MODEL,
                        help="model name (self-hosted NIM: nvidia/nvclip-vit-h-14)")
    parser.add_argument("--nvclip-timeout", type=float, default=CHECK_NVCLIP_TIMEOUT_S,
                        help=f"seconds to wait for each answer (default "
                             f"{CHECK_NVCLIP_TIMEOUT_S:g})")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check-nvclip", help="check the NV-CLIP URL and NVIDIA_API_KEY with one tiny request",
        description="Check an NV-CLIP URL and NVIDIA_API_KEY before a long run: readiness "
                    "probe, then one tiny text embedding. Exit 0 if usable, else 1.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, extra: Optional[List[str]] = None,
        out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """Exit code 0 (usable; progress on ``out``) or 2 (a plain ``dicomvec: error:`` line on
    ``err``)."""
    from dicomvec.io.providers.base import FatalProviderError, ProviderConfig
    from dicomvec.io.providers.nvclip import NVClipProvider
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    settings = {"url": args.nvclip_url, "model": args.nvclip_model,
                "timeout_s": args.nvclip_timeout, "connect_timeout_s": min(10.0,
                                                                           args.nvclip_timeout),
                "max_attempts": 1, "concurrency": 1, "max_requests_per_minute": 0}
    try:
        provider = NVClipProvider(ProviderConfig("nvclip", settings))
        provider.setup()
    except (FatalProviderError, ValueError) as exc:
        print(f"dicomvec: error: {exc}", file=err)
        return 2
    try:
        return _check(provider, args.nvclip_url, out, err)
    except FatalProviderError as exc:
        print(f"dicomvec: error: {exc}", file=err)
        return 2
    finally:
        provider.teardown()


def _check(provider, url: str, out: TextIO, err: TextIO) -> int:
    status, reason = provider.probe_ready()
    if status is None:
        print(f"dicomvec: error: cannot reach {url}: {reason}", file=err)
        return 2
    if status == 200:
        print(f"ready: {url}/health/ready answered 200", file=out)
    elif status == 404:
        print(f"ready: no /health/ready at {url} (normal for the hosted API); skipped", file=out)
    elif status == 503:
        print(f"dicomvec: error: the NIM at {url} is not ready yet (503); wait for the model "
              "to load", file=err)
        return 2
    else:
        print(f"dicomvec: error: {url}/health/ready answered {status} {reason}".rstrip(),
              file=err)
        return 2
    started = time.monotonic()
    result = provider.embed_texts([PROBE_TEXT])[0]
    elapsed_ms = (time.monotonic() - started) * 1000
    if not result.ok:
        print(f"dicomvec: error: test embedding failed: {result.error_type}: "
              f"{result.error_message}", file=err)
        return 2
    print(f"OK: {provider.model} at {url} returned a {result.vector.shape[0]}-d vector in "
          f"{elapsed_ms:.0f} ms", file=out)
    return 0

