"""Beam Python worker pool for EXTERNAL environments, bound to one address.

Flows in: StartWorker requests from the Flink TaskManager's Beam operators (gRPC).
Flows out: one SDK harness *process* per request, started by ``sdk_worker_boot.py`` (run by the
``python`` first on PATH, so the workers run with this project's environment: dicomvec and its
dependencies installed) with the job's pipeline options, as Beam's SDK container boots one.

Same as ``python -m apache_beam.runners.worker.worker_pool_main --service_port=50000
--container_executable=scripts/flink/sdk_worker_boot.py`` except that
Beam's module binds ``[::]`` (every interface); this one binds ``--bind`` (default 127.0.0.1).
"""
import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

import grpc
from apache_beam.portability.api import beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
from apache_beam.utils import thread_pool_executor

BOOT = Path(__file__).resolve().with_name("sdk_worker_boot.py")


def serve(bind: str, port: int) -> None:
    """Serve the worker pool on bind:port until SIGTERM/SIGINT, then stop its workers."""
    # each worker boots through sdk_worker_boot.py: it fetches the job's pipeline options from
    # the runner (Beam's filesystems on the worker need them: s3:// endpoint, region)
    pool = BeamFnExternalWorkerPoolServicer(use_process=True, container_executable=str(BOOT))
    server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                         options=[("grpc.http2.max_pings_without_data", 0),
                                  ("grpc.http2.max_ping_strikes", 0)])
    bound = server.add_insecure_port(f"{bind}:{port}")
    if not bound:
        raise SystemExit(f"worker pool: cannot bind {bind}:{port}")
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()
    logging.info("Beam worker pool listening on %s:%d (python=%s)", bind, bound, sys.executable)

    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    logging.info("stopping worker pool and %d worker process(es)", len(pool._worker_processes))
    for worker_id in list(pool._worker_processes):
        proc = pool._worker_processes.pop(worker_id)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except Exception:  # pylint: disable=broad-except
            proc.kill()
    server.stop(5).wait()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--service_port", type=int, default=50000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(args.bind, args.service_port)


if __name__ == "__main__":
    main()
