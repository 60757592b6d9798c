"""The Go servers of the bucket tests and benchmarks, run on 127.0.0.1: toxiproxy (a TCP proxy
with latency / bandwidth toxics, configured through its HTTP API) and fake-gcs-server (a GCS
JSON-API server). ``scripts/bucket/install.sh`` builds both into ``.cache/bucket/``.

``tool(name)`` returns a binary's path, building them on first use; when that fails the caller
decides (tests: skip locally, FAIL in CI — see ``require_tool``).
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import requests

from tests.s3_server import free_port

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "scripts" / "bucket" / "install.sh"


class ToolMissing(RuntimeError):
    pass


def tool(name: str) -> Path:
    """``fake-gcs-server`` or ``toxiproxy-server``: built by scripts/bucket/install.sh."""
    folder = Path(os.environ.get("DICOMVEC_BUCKET_TOOLS_DIR", REPO / ".cache" / "bucket"))
    binary = folder / name
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    result = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0 or not binary.is_file():
        raise ToolMissing(f"{name} could not be built by {INSTALL.relative_to(REPO)}: "
                          f"{(result.stderr or result.stdout).strip()[-500:]}")
    return binary


def require_tool(name: str) -> Path:
    """For fixtures: the binary, or skip (locally) / fail (CI=true) when it cannot be built."""
    import pytest
    try:
        return tool(name)
    except (ToolMissing, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer at {url}")
            time.sleep(0.1)


def _stop(proc: Optional[subprocess.Popen]) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Toxiproxy:
    """toxiproxy-server on a free port; ``proxy(name, upstream)`` returns the proxy's
    ``host:port``; ``network(name, latency_ms, rate_mb_s)`` sets its toxics (downstream: a
    latency before the answer's first byte, a bandwidth limit per connection)."""

    def __init__(self):
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Toxiproxy":
        self.proc = subprocess.Popen([str(tool("toxiproxy-server")), "-host", "127.0.0.1",
                                      "-port", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        _wait_http(f"{self.api}/version", self.proc, "toxiproxy-server")
        return self

    def __exit__(self, *exc) -> None:
        _stop(self.proc)

    def proxy(self, name: str, upstream: str) -> str:
        listen = f"127.0.0.1:{free_port()}"
        requests.post(f"{self.api}/proxies", json={"name": name, "listen": listen,
                                                   "upstream": upstream, "enabled": True},
                      timeout=10).raise_for_status()
        return listen

    def network(self, name: str, latency_ms: int = 0, rate_mb_s: float = 0) -> None:
        """Replace the proxy's toxics: ``latency_ms`` on every answer (first byte),
        ``rate_mb_s`` MB/s per connection (0: none)."""
        toxics = requests.get(f"{self.api}/proxies/{name}/toxics", timeout=10).json()
        for toxic in toxics:
            requests.delete(f"{self.api}/proxies/{name}/toxics/{toxic['name']}",
                            timeout=10).raise_for_status()
        if latency_ms:
            self._toxic(name, "latency", {"latency": int(latency_ms), "jitter": 0})
        if rate_mb_s:
            # toxiproxy's rate is in KB/s (1 KB = 1000 bytes)
            self._toxic(name, "bandwidth", {"rate": int(rate_mb_s * 1000)})

    def enable(self, name: str, enabled: bool) -> None:
        requests.post(f"{self.api}/proxies/{name}", json={"enabled": enabled},
                      timeout=10).raise_for_status()

    def _toxic(self, proxy: str, kind: str, attributes: Dict) -> None:
        requests.post(f"{self.api}/proxies/{proxy}/toxics",
                      json={"name": kind, "type": kind, "stream": "downstream",
                            "toxicity": 1.0, "attributes": attributes},
                      timeout=10).raise_for_status()


class FakeGcsServer:
    """fake-gcs-server (GCS JSON and XML API over HTTP) on a free port, in-memory backend.
    ``endpoint`` is its base URL; point Beam's GCS client at it with ``STORAGE_EMULATOR_HOST``
    (``env()``)."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "FakeGcsServer":
        self.proc = subprocess.Popen(
            [str(tool("fake-gcs-server")), "-scheme", "http", "-host", "127.0.0.1", "-port",
             str(self.port), "-backend", "memory", "-external-url", self.endpoint,
             "-log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_http(f"{self.endpoint}/storage/v1/b", self.proc, "fake-gcs-server")
        return self

    def __exit__(self, *exc) -> None:
        _stop(self.proc)

    def env(self, endpoint: Optional[str] = None) -> Dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": endpoint or self.endpoint}

    def create_bucket(self, bucket: str) -> None:
        requests.post(f"{self.endpoint}/storage/v1/b", params={"project": "test"},
                      json={"name": bucket}, timeout=10).raise_for_status()

    def upload(self, bucket: str, name: str, data: bytes) -> None:
        requests.post(f"{self.endpoint}/upload/storage/v1/b/{bucket}/o",
                      params={"uploadType": "media", "name": name}, data=data,
                      headers={"Content-Type": "application/octet-stream"},
                      timeout=60).raise_for_status()

    def delete(self, bucket: str, name: str) -> None:
        from urllib.parse import quote
        requests.delete(f"{self.endpoint}/storage/v1/b/{bucket}/o/{quote(name, safe='')}",
                        timeout=10).raise_for_status()

    def upload_tree(self, local_root: Path, bucket: str, prefix: str,
                    pattern: str = "**/*.dcm") -> List[str]:
        uploaded = []
        for path in sorted(Path(local_root).glob(pattern)):
            name = "/".join(p for p in (prefix.strip("/"),
                                        path.relative_to(local_root).as_posix()) if p)
            self.upload(bucket, name, path.read_bytes())
            uploaded.append(f"gs://{bucket}/{name}")
        return uploaded
