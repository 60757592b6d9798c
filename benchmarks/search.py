"""Search latency, cold start, memory and recall: the SQLite store's vector index vs the old
full scan, and PostgreSQL's HNSW index vs its exact scan, on clustered 1024-d vectors.

For each size (default 10,000 and 377,110 rows, MIMIC-CXR's count) it fills a fresh SQLite store
of dicomvec's schema with clustered unit vectors (``benchmarks/clustered.py``; Provider
``thumbnail``, views PA/AP/LATERAL in turn) and measures, each in its own process:

* ``indexed``: a long-lived caller (``VectorStore`` opened per query as ``run_search`` does,
  the index object kept by the process): build/sync time, p50/p95 per query, peak RSS;
* ``cold``: ``dicomvec search --image Q.dcm --provider thumbnail --k 10`` as a new process,
  wall time from start to printed result and its peak RSS (the index already built); with
  ``--baseline-ref REF`` the same for the code at REF (``git archive``), rounds interleaved,
  on a hard link of the database (so each code keeps its own index);
* ``old scan``: the full-scan search as it was before the index (every row fetched, stacked,
  scored), p50 and peak RSS, on a few queries — the baseline, measured in the same run;
* recall@10 of the index against the exact top 10 (computed in numpy from the generated
  vectors), over 50 queries drawn from the same mixture, and with a view filter (``PA``).

PostgreSQL (``--pg-rows``, default 100,000; 0 skips): the same vectors in a private pgvector
server (``tests/pg_fixtures.py``), HNSW ``vector_cosine_ops`` built by ``create_index``; p50/p95
through ``VectorStore.nearest`` (the plan is checked to use the index), the exact scan (index
scans off) as baseline (20 timed) and truth for recall@10 (50 queries), and the same queries
at other ``hnsw.ef_search`` values (``ef_search_sweep``).

The load average at the start and end of each size is recorded: the machine is shared.

Run from the repository root (writes ``benchmarks/results/search.json``):
    PYTHONPATH=. .venv/bin/python benchmarks/search.py [--sizes 10000,377110] [--pg-rows 100000]
        [--baseline-ref c1af950]
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.clustered import Clustered  # noqa: E402
from benchmarks.common import REPO, machine, status_mb  # noqa: E402

DIM = 1024
K = 10
QUERIES = 50
PROVIDER = "thumbnail"
CHUNK = 8192


def percentiles(values: List[float]) -> Dict[str, float]:
    return {"p50_ms": round(float(np.percentile(values, 50)) * 1000, 2),
            "p95_ms": round(float(np.percentile(values, 95)) * 1000, 2)}


def queries() -> np.ndarray:
    return Clustered().sample(QUERIES, seed=99)


def fill_sqlite(path: Path, n: int) -> Dict[str, object]:
    """A store of ``n`` clustered rows; the exact top K of every query (and with view PA),
    computed while filling."""
    from dicomvec.io.stores import VectorStore
    store = VectorStore(f"sqlite:///{path}")
    store.init_schema(DIM)
    store.close()
    conn = sqlite3.connect(path)
    q = queries()
    best = np.full((QUERIES, K), -2.0, np.float32)
    best_ids = np.zeros((QUERIES, K), np.int64)
    best_pa = best.copy()
    best_pa_ids = best_ids.copy()
    gen = Clustered()
    views = ("PA", "AP", "LATERAL")
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        x = gen.sample(m, seed=1000 + start // CHUNK)
        conn.executemany(
            "INSERT INTO MIMICCXRImages (SubjectID, StudyID, ImageID, ImagePath, DicomFile, "
            "ViewPosition, Vector, EmbeddingModel, Provider, PreprocessVersion) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(f"1{i % 65000:07d}", f"5{i:07d}", f"bench-{i:07d}", f"files/bench-{i:07d}.dcm",
              f"bench-{i:07d}.dcm", views[i % 3], x[i - start].astype("<f4").tobytes(),
              "bench", PROVIDER, "1") for i in range(start, start + m)])
        conn.commit()
        scores = q @ x.T
        ids = np.arange(start, start + m)
        for target, target_ids, mask in ((best, best_ids, None), (best_pa, best_pa_ids, 0)):
            s = scores if mask is None else scores[:, ids % 3 == 0]
            i = ids if mask is None else ids[ids % 3 == 0]
            merged = np.concatenate([target, s], axis=1)
            merged_ids = np.concatenate([target_ids, np.broadcast_to(i, s.shape)], axis=1)
            top = np.argsort(-merged, axis=1)[:, :K]
            target[:] = np.take_along_axis(merged, top, 1)
            target_ids[:] = np.take_along_axis(merged_ids, top, 1)
    conn.close()
    return {"truth": [[f"bench-{i:07d}" for i in row] for row in best_ids],
            "truth_pa": [[f"bench-{i:07d}" for i in row] for row in best_pa_ids]}


# -- children: each measurement in its own process (clean peak RSS) -------------------------

def child_indexed(db: str) -> dict:
    from dicomvec.io.stores import VectorStore
    q = queries()
    started = time.perf_counter()
    with VectorStore(f"sqlite:///{db}") as store:
        store.nearest(q[0], K, PROVIDER)  # builds or syncs the index
    first_s = time.perf_counter() - started
    rss_after_build = status_mb("VmRSS")
    times, found, found_pa, times_pa = [], [], [], []
    for vector in q:
        t = time.perf_counter()
        with VectorStore(f"sqlite:///{db}") as store:  # as run_search: a store per query
            hits = store.nearest(vector, K, PROVIDER)
        times.append(time.perf_counter() - t)
        found.append([h.ImageID for h in hits])
    for vector in q:
        t = time.perf_counter()
        with VectorStore(f"sqlite:///{db}") as store:
            hits = store.nearest(vector, K, PROVIDER, "PA")
        times_pa.append(time.perf_counter() - t)
        found_pa.append([h.ImageID for h in hits])
    return {"first_query_s": round(first_s, 2), **percentiles(times),
            "view_PA": percentiles(times_pa), "found": found, "found_pa": found_pa,
            "rss_mb": status_mb("VmRSS"), "peak_rss_mb": status_mb("VmHWM"),
            "rss_after_build_mb": rss_after_build}


def old_scan(conn, vector, k, provider):
    """The SQLite search before the index (kept here as the baseline): every row fetched,
    stacked into one matrix and scored."""
    from dicomvec.io.stores.tables import IMAGES
    rows = conn.execute(f"SELECT {', '.join(IMAGES.hit_columns)}, Vector FROM MIMICCXRImages "
                        "WHERE Provider = ?", [provider]).fetchall()
    matrix = np.stack([np.frombuffer(r[-1], dtype="<f4").copy() for r in rows])
    query = vector / max(float(np.linalg.norm(vector)), 1e-12)
    scores = matrix @ query / np.maximum(np.linalg.norm(matrix, axis=1), 1e-12)
    order = np.argsort(-scores, kind="stable")[:k]
    return [rows[i][0] for i in order]


def child_old_scan(db: str, n_queries: int) -> dict:
    conn = sqlite3.connect(db)
    times = []
    for vector in queries()[:n_queries]:
        t = time.perf_counter()
        old_scan(conn, vector, K, PROVIDER)
        times.append(time.perf_counter() - t)
    return {**percentiles(times), "queries": n_queries, "peak_rss_mb": status_mb("VmHWM")}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], cwd=REPO,
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def cold_search(db: str, image: Path, tree: Path = REPO) -> Tuple[float, float]:
    """``dicomvec search`` (the code in ``tree``) as a new process: (wall s, peak RSS MB)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dicomvec.cli", "search", "--image",
                             str(image), "--sink", f"sqlite:///{db}", "--provider", PROVIDER,
                             "--k", str(K)], cwd=tree, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(tree)})
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if status != 0 or b"rank" not in out:
        raise RuntimeError(f"dicomvec search failed: {proc.stderr.read().decode()[-500:]}")
    return wall, usage.ru_maxrss / 1024


def cold_compare(db: Path, image: Path, baseline: Optional[Path], rounds: int = 3) -> dict:
    """Cold ``dicomvec search`` of this tree and, with ``baseline`` (the code at
    ``--baseline-ref``), of that code in the same run, rounds interleaved. The baseline
    searches a hard link of the database (its own index beside it, built by one untimed
    warm-up search)."""
    runs = {"current": (db, REPO)}
    if baseline is not None:
        link = db.with_name(db.stem + ".base.db")
        os.link(db, link)
        started = time.perf_counter()
        cold_search(str(link), image, baseline)
        runs["baseline"] = (link, baseline)
        warm_up = round(time.perf_counter() - started, 1)
    walls: Dict[str, list] = {name: [] for name in runs}
    peaks: Dict[str, list] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (path, tree) in runs.items():
            wall, peak = cold_search(str(path), image, tree)
            walls[name].append(wall)
            peaks[name].append(peak)
    result = {name: {"wall_s_median": round(float(np.median(walls[name])), 3),
                     "wall_s": [round(w, 3) for w in walls[name]],
                     "peak_rss_mb": round(max(peaks[name]), 1)} for name in runs}
    if baseline is not None:
        result["baseline"]["index_warm_up_s"] = warm_up
        result["speedup_vs_baseline"] = round(result["baseline"]["wall_s_median"] /
                                              result["current"]["wall_s_median"], 2)
    return result


def recall(found: List[List[str]], truth: List[List[str]]) -> float:
    return round(float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)])), 4)


def sqlite_size(n: int, work: Path, image: Path, scan_queries: int,
                baseline_tree: Optional[Path]) -> dict:
    db = work / f"search-{n}.db"
    started = time.perf_counter()
    truth = fill_sqlite(db, n)
    fill_s = time.perf_counter() - started
    load_start = os.getloadavg()
    baseline = run_child("old_scan", str(db), str(scan_queries))
    indexed = run_child("indexed", str(db))
    cold = cold_compare(db, image, baseline_tree)
    result = {"rows": n, "fill_s": round(fill_s, 1),
              "loadavg": {"start": load_start, "end": os.getloadavg()}, "old_scan": baseline,
              "indexed": {k: v for k, v in indexed.items() if not k.startswith("found")},
              "recall_at_10": recall(indexed["found"], truth["truth"]),
              "recall_at_10_view_PA": recall(indexed["found_pa"], truth["truth_pa"]),
              "cold_search": cold}
    for path in [*work.glob(f"search-{n}.db*"), *work.glob(f"search-{n}.base.db*")]:
        if path.is_dir():
            import shutil
            shutil.rmtree(path)
        else:
            path.unlink()
    return result


def postgres_size(n: int, pg_truth: int = QUERIES, ef_sweep=(100, 200, 400)) -> dict:
    from dicomvec.io.stores import ImageRow, VectorStore
    from tests.pg_fixtures import LocalPostgres
    q = queries()
    gen = Clustered()
    result: Dict[str, object] = {"rows": n}
    with LocalPostgres(durable=False) as server:
        url = server.url()
        store = VectorStore(url)
        store.init_schema(DIM)
        started = time.perf_counter()
        views = ("PA", "AP", "LATERAL")
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            x = gen.sample(m, seed=1000 + start // CHUNK)
            rows = [ImageRow(f"1{i % 65000:07d}", f"5{i:07d}", f"bench-{i:07d}",
                             f"files/bench-{i:07d}.dcm", f"bench-{i:07d}.dcm", views[i % 3],
                             x[i - start], "bench", PROVIDER, "1") for i in range(start, start + m)]
            for b in range(0, m, 1000):
                assert store.upsert(rows[b:b + 1000]) == []
        result["fill_s"] = round(time.perf_counter() - started, 1)
        with server.admin() as admin:
            admin.execute("ALTER SYSTEM SET maintenance_work_mem = '1GB'")
            admin.execute("SELECT pg_reload_conf()")
        store.close()
        started = time.perf_counter()
        store.create_index()
        result["index_build_s"] = round(time.perf_counter() - started, 1)

        def exact(vector):
            def action(conn):
                conn.execute("SET LOCAL enable_indexscan = off")
                return store.dialect.nearest(conn, vector, K, PROVIDER, None)
            return store.read(action, "exact")
        times, found = [], []
        for vector in q:
            t = time.perf_counter()
            hits = store.nearest(vector, K, PROVIDER)
            times.append(time.perf_counter() - t)
            found.append([h.ImageID for h in hits])
        exact_times, truth = [], []
        for vector in q[:20]:
            t = time.perf_counter()
            truth.append([h.ImageID for h in exact(vector)])
            exact_times.append(time.perf_counter() - t)
        for vector in q[20:pg_truth]:
            truth.append([h.ImageID for h in exact(vector)])
        sql, params = store.dialect.nearest_sql(q[0], K, PROVIDER, None)
        plan = store.read(lambda conn: store.dialect.explain(conn, sql, params), "plan")
        result.update(hnsw={**percentiles(times), "plan_uses_index":
                            store.dialect.index_name.lower() in plan.lower()},
                      exact_scan=percentiles(exact_times),
                      recall_at_10=recall(found[:pg_truth], truth), recall_queries=pg_truth,
                      plan=[line[:160] for line in plan.splitlines()[:4]])

        from dicomvec.io.stores.dialects import Dialect

        def at_ef(vector, ef):  # the dialect's query with another hnsw.ef_search
            def action(conn):
                conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(ef)])
                return Dialect.nearest(store.dialect, conn, vector, K, PROVIDER, None)
            return store.read(action, "nearest at ef_search")
        sweep = {}
        for ef in ef_sweep:
            times, found = [], []
            for vector in q[:pg_truth]:
                t = time.perf_counter()
                found.append([h.ImageID for h in at_ef(vector, ef)])
                times.append(time.perf_counter() - t)
            sweep[str(ef)] = {**percentiles(times), "recall_at_10": recall(found, truth)}
        result["ef_search_sweep"] = sweep
        store.close()
    return result


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        out = child_indexed(rest[0]) if kind == "indexed" else \
            child_old_scan(rest[0], int(rest[1]))
        print(json.dumps(out))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,377110")
    parser.add_argument("--pg-rows", type=int, default=100_000)
    parser.add_argument("--scan-queries", type=int, default=3,
                        help="queries for the old full scan (seconds each at 377K)")
    parser.add_argument("--work", default=None, help="folder for the databases (temp)")
    parser.add_argument("--baseline-ref", default=None,
                        help="git ref whose `dicomvec search` is also timed cold, in the same "
                             "run (e.g. the commit before a change)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search.json"))
    args = parser.parse_args(argv)
    info = machine()
    results: Dict[str, object] = {"machine": info, "dimension": DIM, "k": K,
                                  "queries": QUERIES, "sqlite": [], "postgresql": None}
    with tempfile.TemporaryDirectory(prefix="dicomvec-search-", dir=args.work) as tmp:
        work = Path(tmp)
        from dicomvec import synthetic
        synthetic.generate(work / "query", 1, (512, 512), ("native",), 0, seed=5)
        image = next((work / "query").rglob("*.dcm"))
        baseline_tree = None
        if args.baseline_ref:
            baseline_tree = work / "baseline"
            baseline_tree.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline_ref],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(baseline_tree)], input=archive, check=True)
            results["baseline_ref"] = subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--short", args.baseline_ref],
                check=True, capture_output=True, text=True).stdout.strip()
        for n in [int(s) for s in args.sizes.split(",") if s]:
            r = sqlite_size(n, work, image, args.scan_queries, baseline_tree)
            results["sqlite"].append(r)
            print(json.dumps(r), flush=True)
    if args.pg_rows:
        results["postgresql"] = postgres_size(args.pg_rows)
        print(json.dumps(results["postgresql"]), flush=True)
    info["loadavg_end"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
