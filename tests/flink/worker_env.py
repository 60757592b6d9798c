"""The EXTERNAL worker pool with a test's environment: a Flink job's Python workers are started
by the cluster's worker pool (``scripts/flink/start.sh workerpool``) and inherit *its*
environment, not the driver's. Secrets a worker needs (AWS credentials for s3://, the
``NVIDIA_API_KEY`` for NV-CLIP) therefore reach it the way they reach a real cluster's workers:
through the environment the pool was started with, never through pipeline options.

``worker_pool_env(cluster, extra={...}, unset=(...))`` restarts the pool with that environment
for the ``with`` block, and restarts it with the cluster's original environment afterwards (the
session's other tests share the pool).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Iterator


@contextlib.contextmanager
def worker_pool_env(cluster, extra: Dict[str, str], unset: Iterable[str] = ()) -> Iterator:
    original = dict(cluster.env)
    cluster.stop("workerpool")
    cluster.env = {k: v for k, v in original.items() if k not in extra and k not in tuple(unset)}
    cluster.env.update(extra)
    try:
        cluster.start("workerpool")
        yield cluster
    finally:
        cluster.stop("workerpool")
        cluster.env = original
        cluster.start("workerpool")
