"""Bytes fetched per image from S3: identify (header) and decode (pixels), counted by the server.

A real S3-compatible server (moto, ``tests.s3_server``: its own process on 127.0.0.1, IAM
credentials enforced) holds a synthetic MIMIC-size archive (``dicomvec.synthetic``, 3056×2544,
16-bit; native Explicit VR Little Endian as in MIMIC-CXR, plus JPEG 2000 lossless). The server
counts the response bytes it actually writes to the socket for every request. In one run:

* **baseline**: the header read through Beam's default open (``FileSystems.open`` → Beam's S3
  downloader: ``Range: bytes=0-`` behind a 16 MB read buffer), as identify read before;
* **identify**: the pipeline's header reader (``object_storage.HeaderReader``: bounded
  ``Range: bytes=0-65535`` GETs) over every object;
* **whole-file read CPU**: ``FileSystems.open`` + read (Beam builds a new boto3 client per
  file) vs decode's ``object_storage.ObjectReader`` (Beam's S3 reader on one client), CPU ms;
* **pipeline**: ``dicomvec run`` on the local engine over ``s3://bucket/files/**/*.dcm`` (thumbnail
  provider, SQLite): bytes and requests per object, split into identify's bounded reads and
  decode's open-ended read, and the list requests.

Writes ``benchmarks/results/s3_bytes.json`` (commit, load average at start and end) and prints
a table. Run from the repository root:

    PYTHONPATH=. python -m benchmarks.s3_bytes [--count 8] [--json benchmarks/results/s3_bytes.json]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, cached_archive, dicom_paths, machine  # noqa: E402
from dicomvec import synthetic  # noqa: E402

BUCKET = "mimic-cxr"
TARGET_IDENTIFY_BYTES = 128 * 1024


def _per_object(traffic: List[Dict]) -> Dict[str, List[Dict]]:
    objects = collections.defaultdict(list)
    for entry in traffic:
        if entry["path"].startswith(f"/{BUCKET}/") and entry["path"].endswith(".dcm"):
            objects[entry["path"][len(BUCKET) + 2:]].append(entry)
    return objects


def _bounded(entry: Dict) -> bool:
    return entry["method"] == "GET" and entry["range"] and not entry["range"].endswith("-")


def _stats(values: List[int]) -> Dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "mean": round(sum(values) / len(values), 1)}


def header_reads(server, paths: List[str], sizes: Dict[str, int], beam_default: bool) -> Dict:
    """Read each object's header the old way (Beam's default open) or the pipeline's way."""
    from apache_beam.io.filesystems import FileSystems
    from dicomvec import imaging
    from dicomvec.io.object_storage import HeaderReader
    reader = HeaderReader({"s3_endpoint_url": server.endpoint, "s3_region_name": "us-east-1"})
    server.reset_traffic()
    started = time.perf_counter()
    for path in paths:
        stream = (FileSystems.open(path) if beam_default
                  else reader.open_s3(path, sizes[path]))
        with stream:
            imaging.read_dataset(stream, stop_before_pixels=True)
    wall = time.perf_counter() - started
    time.sleep(0.5)  # let abandoned responses finish counting
    objects = _per_object(server.traffic())
    sent = [sum(e["bytes"] for e in entries) for entries in objects.values()]
    requests = [len(entries) for entries in objects.values()]
    return {"objects": len(objects), "bytes_per_image": _stats(sent),
            "requests_per_image": _stats(requests), "wall_s": round(wall, 3),
            "ranges": sorted({e["range"] for es in objects.values() for e in es})}


def open_cpu(server, paths: List[str], rounds: int = 3) -> Dict:
    """CPU ms per whole-file read (open + read): ``FileSystems.open`` (a new boto3 client per
    file) vs decode's ``ObjectReader`` (Beam's S3 reader on one client), alternating."""
    from apache_beam.io.filesystems import FileSystems
    from dicomvec.io.object_storage import ObjectReader
    reader = ObjectReader({"s3_endpoint_url": server.endpoint, "s3_region_name": "us-east-1"})
    samples = {"filesystems_open": [], "object_reader": []}
    for _ in range(rounds):
        for path in paths:
            for name, opener in (("filesystems_open", FileSystems.open),
                                 ("object_reader", reader.open)):
                started = time.process_time()
                with opener(path) as stream:
                    stream.read()
                samples[name].append((time.process_time() - started) * 1000)
    return {name: {"median_cpu_ms": round(statistics.median(v), 2),
                   "min_cpu_ms": round(min(v), 2), "reads": len(v)}
            for name, v in samples.items()}


def pipeline_run(server, work: Path, sizes_by_key: Dict[str, int]) -> Dict:
    from dicomvec.pipeline.run import run_ingest
    server.reset_traffic()
    summary = run_ingest(["--input", f"s3://{BUCKET}/files/**/*.dcm",
                          "--sink", f"sqlite:///{work}/s3.sqlite",
                          "--dead-letter", str(work / "dl"), "--provider", "thumbnail",
                          "--run-id", "s3-bytes", *server.flags()])
    time.sleep(0.5)
    traffic = server.traffic()
    objects = _per_object(traffic)
    identify, decode, ratio, requests = [], [], [], collections.Counter()
    for key, entries in objects.items():
        ident = sum(e["bytes"] for e in entries if _bounded(e))
        dec = sum(e["bytes"] for e in entries if e["method"] == "GET" and not _bounded(e))
        identify.append(ident)
        decode.append(dec)
        ratio.append(round(dec / sizes_by_key[key], 4))
        for e in entries:
            kind = "GET bounded" if _bounded(e) else f"{e['method']}" + (
                " open-ended" if e["method"] == "GET" else "")
            requests[kind] += 1
    lists = sum(1 for e in traffic if "list-type=2" in e["query"])
    n = len(objects)
    return {"matched": summary.matched, "stored": summary.stored,
            "dead_lettered": summary.dead_lettered_total,
            "wall_s": round(summary.wall_time_s, 2),
            "identify_bytes_per_image": _stats(identify),
            "decode_bytes_per_image": _stats(decode),
            "decode_bytes_over_object_size": _stats(ratio),
            "requests_per_image": {k: round(v / n, 2) for k, v in sorted(requests.items())},
            "list_requests": lists}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8, help="images in the archive")
    parser.add_argument("--size", default="3056x2544", type=synthetic.parse_size)
    parser.add_argument("--syntaxes", default="native,j2k")
    parser.add_argument("--cache", default=str(REPO / ".cache" / "bench-s3"))
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "s3_bytes.json"))
    args = parser.parse_args(argv)

    from tests.s3_server import S3Server
    info = machine()
    syntaxes = tuple(s for s in args.syntaxes.split(",") if s)
    root = cached_archive(Path(args.cache), args.count, args.size, syntaxes, seed=0)
    files = dicom_paths(root)
    with S3Server() as server, tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        key, secret = server.create_credentials()
        admin = server.admin_client()
        admin.create_bucket(Bucket=BUCKET)
        server.upload_tree(admin, root, BUCKET, "")
        server.enforce_auth()
        os.environ.update(server.env(key, secret))
        from apache_beam.io.filesystems import FileSystems
        from apache_beam.options.pipeline_options import PipelineOptions
        FileSystems.set_options(PipelineOptions(server.flags()))
        sizes = {f"s3://{BUCKET}/{p.relative_to(root).as_posix()}": p.stat().st_size
                 for p in files}
        paths = sorted(sizes)
        result = {
            "machine": info, "images": len(files), "size": list(args.size),
            "syntaxes": list(syntaxes),
            "object_bytes": _stats(list(sizes.values())),
            "server": "moto[server] (tests.s3_server, own process, 127.0.0.1)",
            "beam_default_header_read": header_reads(server, paths, sizes, beam_default=True),
            "identify_header_read": header_reads(server, paths, sizes, beam_default=False),
            "whole_file_read_cpu": open_cpu(server, paths),
            "pipeline": pipeline_run(server, Path(tmp), {
                p[len(f"s3://{BUCKET}/"):]: s for p, s in sizes.items()}),
        }
    info["loadavg_end"] = os.getloadavg()
    ident = result["pipeline"]["identify_bytes_per_image"]["max"]
    result["targets"] = [
        {"target": "identify <= 128 KB per image", "value": ident,
         "met": ident <= TARGET_IDENTIFY_BYTES},
        {"target": "decode reads each object once",
         "value": result["pipeline"]["decode_bytes_over_object_size"],
         "met": result["pipeline"]["decode_bytes_over_object_size"]["max"] == 1.0
         and result["pipeline"]["decode_bytes_over_object_size"]["min"] == 1.0}]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("object_bytes", "beam_default_header_read",
                                             "identify_header_read", "whole_file_read_cpu",
                                             "pipeline", "targets")},
                     indent=1))
    print(f"commit {info['commit']}; load average start {info['loadavg_start']}, "
          f"end {info['loadavg_end']}; written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
