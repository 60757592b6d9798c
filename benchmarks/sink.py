"""Sink write throughput: batched upserts through ``VectorStore`` vs row-by-row commits.

Writes N (default 20,000) 1024-d float32 rows in batches of 64 into SQLite (temp file) and a
private PostgreSQL 16 + pgvector server (from the ``pgserver`` wheel, durable settings: fsync
on), through the same code path the pipeline's write DoFn uses (``VectorStore.upsert``). In the
same run it measures the baseline: the same rows written one at a time (one parametrised upsert,
one commit each; on a smaller sample, default 2,000 rows), and prints the ratio. A second pass
re-upserts the same rows (the idempotent re-run path: every row is an update).

Run from the repository root (writes ``benchmarks/results/sink.json``: every run's figures, the
medians, the commit and the load average at start and end; ``--out ''`` writes nothing):
    PYTHONPATH=. python benchmarks/sink.py [--rows 20000] [--backends sqlite,postgresql]
A live IRIS can be measured too: ``--backends iris`` with ``DICOMVEC_IRIS_URL`` and
``DICOMVEC_IRIS_PASSWORD`` set (tables in schema ``DicomvecBench``, dropped afterwards).
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, machine  # noqa: E402
from dicomvec.io.stores import ImageRow, VectorStore  # noqa: E402
from dicomvec.io.stores.base import COLUMNS  # noqa: E402

DIM = 1024


def make_rows(n: int, seed: int = 0) -> List[ImageRow]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [ImageRow(SubjectID=f"1{i % 65000:07d}", StudyID=f"5{i:07d}", ImageID=f"bench-{i:07d}",
                     ImagePath=f"files/p10/p1{i % 65000:07d}/s5{i:07d}/bench-{i:07d}.dcm",
                     DicomFile=f"bench-{i:07d}.dcm", ViewPosition=("PA", "AP", "LATERAL")[i % 3],
                     Vector=vectors[i], EmbeddingModel="nvidia/nvclip", Provider="nvclip",
                     PreprocessVersion="1")
            for i in range(n)]


def timed_batches(store: VectorStore, rows: List[ImageRow], batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        failed = store.upsert(rows[start:start + batch])
        if failed:
            raise RuntimeError(f"{len(failed)} rows failed: {failed[0][1]}")
    return time.perf_counter() - started


def timed_row_by_row(store: VectorStore, rows: List[ImageRow]) -> float:
    """The naive baseline: one parametrised upsert and one commit per row."""
    conn = store.conn
    sql = store.dialect.upsert_sql(COLUMNS, DIM)
    started = time.perf_counter()
    for row in rows:
        conn.cursor().execute(sql, store.dialect.row_params(row, COLUMNS))
        conn.commit()
    return time.perf_counter() - started


BENCH_SCHEMA = "DicomvecBench"
BENCH_TABLES = ("BaselineImages", "BenchImages")


def drop_bench_tables(url: str) -> None:
    """Remove the benchmark's tables (on a server database that outlives the run)."""
    for table in BENCH_TABLES:
        with VectorStore(url, schema=BENCH_SCHEMA, table=table) as store:
            store.conn.cursor().execute(f"DROP TABLE IF EXISTS {store.dialect.qualified_table}")
            store.conn.commit()


def run_backend(name: str, url: str, rows: List[ImageRow], batch: int,
                baseline_rows: int) -> Dict[str, float]:
    result: Dict[str, float] = {}
    with VectorStore(url, schema=BENCH_SCHEMA, table=BENCH_TABLES[0]) as store:
        store.init_schema(DIM)
        sample = rows[:baseline_rows]
        result["baseline_rows_per_s"] = len(sample) / timed_row_by_row(store, sample)
    with VectorStore(url, schema=BENCH_SCHEMA, table=BENCH_TABLES[1]) as store:
        store.init_schema(DIM)
        result["batched_rows_per_s"] = len(rows) / timed_batches(store, rows, batch)
        result["rerun_rows_per_s"] = len(rows) / timed_batches(store, rows, batch)
        assert store.count() == len(rows), "row count after two passes"
    result["ratio"] = result["batched_rows_per_s"] / result["baseline_rows_per_s"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--baseline-rows", type=int, default=2_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per backend (fresh database each); the median is reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sink.json"),
                        help="write the results (with commit and load average) here")
    args = parser.parse_args(argv)
    info = machine()

    rows = make_rows(args.rows)
    runs: Dict[str, List[Dict[str, float]]] = {}
    for name in args.backends.split(","):
        if name not in ("sqlite", "postgresql", "iris"):
            parser.error(f"unknown backend {name!r}")
        if name == "iris" and not os.environ.get("DICOMVEC_IRIS_URL"):
            parser.error("the iris backend needs DICOMVEC_IRIS_URL (and DICOMVEC_IRIS_PASSWORD)")
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="dicomvec-bench-") as tmp:
                if name == "sqlite":
                    result = run_backend(name, f"sqlite:///{tmp}/bench.db", rows, args.batch,
                                         args.baseline_rows)
                elif name == "iris":  # a live server: tables in schema DicomvecBench, dropped
                    url = os.environ["DICOMVEC_IRIS_URL"]
                    drop_bench_tables(url)
                    try:
                        result = run_backend(name, url, rows, args.batch, args.baseline_rows)
                    finally:
                        drop_bench_tables(url)
                else:
                    from tests.pg_fixtures import LocalPostgres
                    with LocalPostgres(durable=True) as server:
                        result = run_backend(name, server.url(), rows, args.batch,
                                             args.baseline_rows)
            runs.setdefault(name, []).append(result)
    results = {name: {key: float(np.median([r[key] for r in rs])) for key in rs[0]}
               for name, rs in runs.items()}

    info["loadavg_end"] = os.getloadavg()
    report = {"machine": info, "rows": args.rows, "batch": args.batch, "dimension": DIM,
              "baseline_rows": args.baseline_rows, "cpus": os.cpu_count(),
              "repeat": args.repeat, "median": results, "runs": runs}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.rows} rows x {DIM}-d float32, batches of {args.batch}; baseline: "
          f"{args.baseline_rows} rows one at a time, commit each ({os.cpu_count()} CPUs); "
          f"median of {args.repeat} runs")
    print(f"{'backend':<11} {'baseline rows/s':>16} {'batched rows/s':>15} {'re-run rows/s':>14}"
          f" {'batched/baseline':>17}")
    for name, r in results.items():
        print(f"{name:<11} {r['baseline_rows_per_s']:>16,.0f} {r['batched_rows_per_s']:>15,.0f} "
              f"{r['rerun_rows_per_s']:>14,.0f} {r['ratio']:>16.1f}x")
        ratios = ", ".join(f"{x['ratio']:.1f}x" for x in runs[name])
        batched = ", ".join(f"{x['batched_rows_per_s']:,.0f}" for x in runs[name])
        print(f"{'':<11} runs: batched rows/s {batched}; ratios {ratios}")
    print(f"commit {info['commit']}; load average start {info['loadavg_start']}, "
          f"end {info['loadavg_end']}" + (f"; written to {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
