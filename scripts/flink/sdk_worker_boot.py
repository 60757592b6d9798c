#!/usr/bin/env python
"""Boot one Beam Python SDK worker for the worker pool (``worker_pool.py``), as Beam's SDK
container does (its ``boot`` program), minus installing artifacts (the project is already on
``PYTHONPATH``).

Flows in: the endpoints of one StartWorker request, as flags (``--id``, ``--provision_endpoint``,
``--control_endpoint``, ``--logging_endpoint``, ``--artifact_endpoint``).
Flows out: this process becomes ``apache_beam.runners.worker.sdk_worker_main`` with the job's
pipeline options (fetched from the runner's provision service) in ``PIPELINE_OPTIONS``.

Why not the pool's default (a bare ``SdkHarness``): that worker never receives the job's
pipeline options, so Beam's filesystems on the worker have none — ``s3://`` fails with
"Must provide one of client or options" and ``--s3_endpoint_url`` / region never reach it.
"""
import argparse
import os
import sys

import grpc
from google.protobuf import json_format, text_format

from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc
from apache_beam.portability.api import endpoints_pb2


def descriptor(url: str) -> str:
    return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("id", "provision_endpoint", "control_endpoint", "logging_endpoint",
                 "artifact_endpoint"):
        parser.add_argument(f"--{flag}", default="")
    args = parser.parse_args(argv)

    with grpc.insecure_channel(args.provision_endpoint) as channel:
        info = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel).GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(),
            metadata=[("worker_id", args.id)], timeout=60).info

    env = dict(os.environ, WORKER_ID=args.id,
               PIPELINE_OPTIONS=json_format.MessageToJson(info.pipeline_options),
               CONTROL_API_SERVICE_DESCRIPTOR=descriptor(
                   info.control_endpoint.url or args.control_endpoint),
               LOGGING_API_SERVICE_DESCRIPTOR=descriptor(
                   info.logging_endpoint.url or args.logging_endpoint),
               RUNNER_CAPABILITIES=" ".join(info.runner_capabilities))
    if info.status_endpoint.url:
        env["STATUS_API_SERVICE_DESCRIPTOR"] = descriptor(info.status_endpoint.url)
    os.execve(sys.executable,
              [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"], env)


if __name__ == "__main__":
    main()
