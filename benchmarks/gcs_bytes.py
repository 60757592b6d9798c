"""Bytes fetched per image from GCS: identify (header) and decode (pixels), counted on the wire.

A real GCS JSON-API server (fake-gcs-server, ``tests/bucket_tools.py``, built by
``scripts/bucket/install.sh``, its own process on 127.0.0.1) holds a synthetic MIMIC-size
archive (``dicomvec.synthetic``, 3056×2544 16-bit; native and JPEG 2000 lossless). The server
does not log response sizes, so a counting TCP proxy (``CountingProxy`` below, in this process,
on 127.0.0.1) sits between the clients and the server: it reads each HTTP request's method,
target and ``Range`` header from the client's side and adds every byte the server sends back
(status line, headers and body) to the request it answers (one request at a time per
connection, as HTTP/1.1 clients without pipelining send them). In one run:

* **identify**: the pipeline's header reader (``object_storage.HeaderReader``: bounded
  ``Range: bytes=0-65535`` reads through Beam's GCS client) over every object;
* **pipeline**: ``dicomvec run`` on the local engine over ``gs://bucket/files/**/*.dcm`` through
  the proxy (``--gcs_emulator_host``; thumbnail provider, SQLite): bytes and requests per object,
  split into identify's header reads and decode's reads (one GET, or parallel ranges for objects
  of 8 MB and more), and the listings.

Writes ``benchmarks/results/gcs_bytes.json`` (commit, load average at start and end) and prints
a table. Run from the repository root:

    PYTHONPATH=. python -m benchmarks.gcs_bytes [--count 8]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, cached_archive, dicom_paths, machine  # noqa: E402
from dicomvec import synthetic  # noqa: E402
from dicomvec.imaging.reading import HEAD_BYTES  # noqa: E402

BUCKET = "mimic-cxr"
TARGET_IDENTIFY_BYTES = 128 * 1024


class CountingProxy:
    """A TCP proxy on 127.0.0.1 that records, per HTTP request, its method, target, ``Range``
    and the bytes the server sent back for it. ``requests()`` returns the records so far."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._records: List[Dict] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def requests(self) -> List[Dict]:
        with self._lock:
            return [dict(r) for r in self._records]

    def reset(self) -> None:
        with self._lock:
            self._records = []

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            current: List[Optional[Dict]] = [None]  # the request being answered
            threading.Thread(target=self._upstream, args=(client, server, current),
                             daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, current),
                             daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket, current) -> None:
        """Client → server: forward, and note each request head as it passes."""
        pending = b""
        body_left = 0
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                pending += data
                while True:
                    if body_left:
                        used = min(body_left, len(pending))
                        body_left -= used
                        pending = pending[used:]
                        if body_left:
                            break
                    end = pending.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head, pending = pending[:end].decode("latin-1"), pending[end + 4:]
                    lines = head.split("\r\n")
                    method, target = (lines[0].split(" ") + ["", ""])[:2]
                    headers = {k.strip().lower(): v.strip() for k, _, v in
                               (line.partition(":") for line in lines[1:])}
                    body_left = int(headers.get("content-length", 0) or 0)
                    record = {"method": method, "target": target,
                              "range": headers.get("range", ""), "bytes": 0}
                    with self._lock:
                        self._records.append(record)
                    current[0] = record
                # forwarded only once its request is noted: the answer cannot come back first
                server.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (server,):
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def _downstream(self, server: socket.socket, client: socket.socket, current) -> None:
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    break
                with self._lock:
                    if current[0] is not None:
                        current[0]["bytes"] += len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, server):
                try:
                    sock.close()
                except OSError:
                    pass


def _object_name(target: str) -> Optional[str]:
    """The object a media/metadata request is about (``.../b/<bucket>/o/<name>``)."""
    path = urlsplit(target).path
    marker = f"/b/{BUCKET}/o/"
    if marker not in path:
        return None
    name = unquote(path.split(marker, 1)[1])
    return name or None


def _range_length(value: str) -> Optional[int]:
    """Length of ``bytes=a-b``; None when open-ended or absent."""
    if not value.startswith("bytes="):
        return None
    start, _, end = value[6:].partition("-")
    return int(end) - int(start) + 1 if end and start else None


def _classify(records: List[Dict]) -> Dict[str, Dict[str, List[Dict]]]:
    """object name → {"header": [...], "decode": [...], "metadata": [...]} requests."""
    objects: Dict[str, Dict[str, List[Dict]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for record in records:
        name = _object_name(record["target"])
        if name is None or not name.endswith(".dcm") or record["method"] != "GET":
            continue
        if "alt=media" not in record["target"]:
            objects[name]["metadata"].append(record)
            continue
        length = _range_length(record["range"])
        kind = "header" if length is not None and length <= HEAD_BYTES else "decode"
        objects[name][kind].append(record)
    return objects


def _stats(values: List[int]) -> Dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "mean": round(sum(values) / len(values), 1)}


def header_reads(proxy: CountingProxy, paths: List[str], sizes: Dict[str, int]) -> Dict:
    from apache_beam.io.filesystem import FileMetadata
    from apache_beam.options.pipeline_options import PipelineOptions
    from dicomvec.imaging.reading import read_dataset
    from dicomvec.io.object_storage import HeaderReader, storage_settings
    proxy.reset()
    reader = HeaderReader(storage_settings(PipelineOptions([])))
    for path in paths:
        with reader.open_prefetched(path, sizes[path], b"") as stream:
            read_dataset(stream, stop_before_pixels=True)
    objects = _classify(proxy.requests())
    per_image = [sum(r["bytes"] for r in objects[p.split("/", 3)[3]]["header"]) for p in paths]
    requests = [len(objects[p.split("/", 3)[3]]["header"]) for p in paths]
    return {"objects": len(paths), "bytes_per_image": _stats(per_image),
            "requests_per_image": _stats(requests)}


def pipeline_run(proxy: CountingProxy, work: Path, sizes: Dict[str, int]) -> Dict:
    proxy.reset()
    db = work / "gcs.sqlite"
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    env.update(PYTHONPATH=str(REPO), CLOUDSDK_CONFIG="/nonexistent/gcloud")
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    result = subprocess.run(
        [sys.executable, "-m", "dicomvec.cli", "run", "--input",
         f"gs://{BUCKET}/files/**/*.dcm", "--sink", f"sqlite:///{db}", "--dead-letter",
         str(work / "dl"), "--provider", "thumbnail", "--run-id", "gcs-bytes",
         "--gcs_emulator_host", proxy.endpoint], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    records = proxy.requests()
    objects = _classify(records)
    rows = []
    for path, size in sizes.items():
        name = path.split("/", 3)[3]
        parts = objects[name]
        rows.append({"object": name, "size": size,
                     "header_bytes": sum(r["bytes"] for r in parts["header"]),
                     "header_requests": len(parts["header"]),
                     "decode_bytes": sum(r["bytes"] for r in parts["decode"]),
                     "decode_requests": len(parts["decode"]),
                     "metadata_requests": len(parts["metadata"])})
    lists = sum(1 for r in records if r["method"] == "GET" and
                urlsplit(r["target"]).path.rstrip("/").endswith(f"/b/{BUCKET}/o"))
    return {"objects": len(rows), "per_object": rows,
            "header_bytes_per_image": _stats([r["header_bytes"] for r in rows]),
            "header_requests_per_image": _stats([r["header_requests"] for r in rows]),
            "decode_requests_per_image": _stats([r["decode_requests"] for r in rows]),
            "decode_bytes_over_object": _stats([round(r["decode_bytes"] / r["size"], 4)
                                                for r in rows]),
            "metadata_requests_per_image": _stats([r["metadata_requests"] for r in rows]),
            "list_requests": lists, "requests_total": len(records),
            "stdout_tail": result.stdout.strip().splitlines()[-12:]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--size", default="3056x2544")
    parser.add_argument("--syntaxes", default="native,j2k")
    parser.add_argument("--cache", default=str(REPO / ".cache" / "bench-gcs"))
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" /
                                              "gcs_bytes.json"))
    args = parser.parse_args(argv)
    from tests.bucket_tools import FakeGcsServer
    info = machine()
    size = synthetic.parse_size(args.size)
    syntaxes = tuple(s for s in args.syntaxes.split(",") if s)
    root = cached_archive(Path(args.cache), args.count, size, syntaxes, seed=0)
    files = dicom_paths(root)
    with FakeGcsServer() as server, tempfile.TemporaryDirectory(prefix="bench-gcs-") as tmp:
        server.create_bucket(BUCKET)
        uploaded = server.upload_tree(root, BUCKET, "")
        sizes = {gs: path.stat().st_size for gs, path in zip(uploaded, sorted(
            root.glob("**/*.dcm")))}
        proxy = CountingProxy(server.port)
        os.environ["STORAGE_EMULATOR_HOST"] = proxy.endpoint  # this process: header reads
        os.environ["CLOUDSDK_CONFIG"] = "/nonexistent/gcloud"
        try:
            identify = header_reads(proxy, sorted(sizes), sizes)
            run = pipeline_run(proxy, Path(tmp), sizes)
        finally:
            proxy.close()
    info["loadavg_end"] = os.getloadavg()
    header_max = run["header_bytes_per_image"]["max"]
    targets = [{"target": f"identify <= {TARGET_IDENTIFY_BYTES} bytes per image (run)",
                "value": header_max, "met": header_max <= TARGET_IDENTIFY_BYTES},
               {"target": "decode reads each object once (decode bytes / object ~ 1.00)",
                "value": run["decode_bytes_over_object"],
                "met": 0.999 <= run["decode_bytes_over_object"]["min"]
                and run["decode_bytes_over_object"]["max"] <= 1.01}]
    result = {"machine": info, "images": len(files), "size": list(size),
              "syntaxes": list(syntaxes),
              "object_bytes": _stats([p.stat().st_size for p in files]),
              "server": "fake-gcs-server (tests/bucket_tools.py, own process, 127.0.0.1)",
              "counting": "TCP proxy in the benchmark: every byte the server sends, headers "
                          "included, added to the request it answers",
              "identify_header_reads": identify, "pipeline": run, "targets": targets}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    summary = {k: v for k, v in run.items() if k not in ("per_object", "stdout_tail")}
    print(json.dumps({"identify": identify, "pipeline": summary, "targets": targets},
                     indent=1))
    print(f"commit {info['commit']}; load average start {info['loadavg_start']}, "
          f"end {info['loadavg_end']}; written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
