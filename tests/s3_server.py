"""A real S3-compatible server on 127.0.0.1 for tests and benchmarks: moto's standalone server
(``moto[server]`` from PyPI) in its own process, with server-side byte counters.

Why moto: it is a pip install (no Go toolchain, no Docker), it speaks the S3 REST API that
Beam's S3 filesystem uses through boto3 (ListObjectsV2, HEAD, ranged GET, multipart upload,
copy, delete), and it can enforce IAM credentials (signature + access key checks), so wrong and
missing credentials fail as they do on AWS. The client is never mocked: Beam's boto3 client
talks HTTP to this process.

``python -m tests.s3_server [--port P]`` runs moto's own WSGI application
(``DomainDispatcherApplication``, what the ``moto_server`` command runs) under werkzeug, wrapped
in ``TrafficCounter``: every request is logged with its method, path, ``Range`` header, status
and the response bytes the server actually handed to the socket (counted in 64 KB pieces after
each write returns, so an abandoned open-ended download counts what left the server, not the
object's size). ``GET /_traffic`` returns that log as JSON; ``POST /_traffic/reset`` clears it.
It prints its endpoint URL on stdout once it listens and stops when stdin closes.

``S3Server`` (context manager) starts that process on a free port and offers the set-up a test
needs: ``admin_client()``, ``create_credentials()`` (an IAM user with an ``s3:*`` policy and an
access key), ``enforce_auth()`` (from then on every request must be signed by a known key),
``upload_tree()``, ``traffic()`` / ``reset_traffic()``, and ``flags()`` / ``env()`` to point a
``dicomvec`` run (local engine or a Flink worker pool) at it.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import requests

REPO = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
#: credentials the set-up requests use before ``enforce_auth`` (moto accepts any then)
SETUP_CREDENTIALS = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
_PIECE = 64 * 1024


# --------------------------------------------------------------------------- server process


class TrafficCounter:
    """WSGI middleware: logs each request and counts the response bytes actually written."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.log: List[Dict] = []

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/_traffic":
            with self.lock:
                body = json.dumps(self.log).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if path == "/_traffic/reset":
            with self.lock:
                self.log = []
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        entry = {"method": environ.get("REQUEST_METHOD", ""), "path": path,
                 "query": environ.get("QUERY_STRING", ""),
                 "range": environ.get("HTTP_RANGE", ""), "status": 0, "bytes": 0}
        with self.lock:
            self.log.append(entry)

        def recording_start_response(status, headers, exc_info=None):
            entry["status"] = int(status.split()[0])
            return start_response(status, headers, exc_info)

        return self._counted(self.app(environ, recording_start_response), entry)

    @staticmethod
    def _counted(body: Iterable[bytes], entry: Dict):
        try:
            for chunk in body:
                for start in range(0, len(chunk), _PIECE):
                    piece = chunk[start:start + _PIECE]
                    yield piece
                    entry["bytes"] += len(piece)  # the server's write of it returned
        finally:
            close = getattr(body, "close", None)
            if close:
                close()


def serve(port: int) -> None:
    import logging
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    from moto.moto_server.werkzeug_app import (DomainDispatcherApplication,
                                               MotoRequestHandler, create_backend_app)
    from werkzeug.serving import make_server
    app = TrafficCounter(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", port, app, threaded=True,
                         request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"http://127.0.0.1:{server.server_port}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or exits)
    server.shutdown()


# --------------------------------------------------------------------------- client side


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """The server process; ``endpoint`` is its URL. Use as a context manager."""

    def __init__(self, port: Optional[int] = None):
        self.port = port or free_port()
        self.endpoint = ""
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "S3Server":
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.s3_server", "--port",
                                      str(self.port)], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.endpoint = (self.proc.stdout.readline() or "").strip()
        if not self.endpoint:
            self.stop()
            raise RuntimeError("the S3 server (moto) did not start")
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{self.endpoint}/_traffic", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)
        self.reset_traffic()
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- traffic counters

    def traffic(self) -> List[Dict]:
        """Every request since the last reset: method, path, query, range, status, bytes."""
        return requests.get(f"{self.endpoint}/_traffic", timeout=10).json()

    def reset_traffic(self) -> None:
        requests.post(f"{self.endpoint}/_traffic/reset", timeout=10).raise_for_status()

    # ---- set-up

    def admin_client(self, service: str = "s3", **credentials):
        import boto3
        return boto3.session.Session().client(
            service, endpoint_url=self.endpoint, region_name=REGION,
            **(credentials or SETUP_CREDENTIALS))

    def create_credentials(self, user: str = "dicomvec-test") -> Tuple[str, str]:
        """An IAM user allowed ``s3:*``; returns its (access key id, secret access key)."""
        iam = self.admin_client("iam")
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="s3-all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def enforce_auth(self) -> None:
        """From now on every request must be signed with a key ``create_credentials`` made."""
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0",
                      timeout=10).raise_for_status()

    def upload_tree(self, client, local_root: Path, bucket: str, prefix: str,
                    pattern: str = "**/*.dcm") -> List[str]:
        """Upload every file under ``local_root`` matching ``pattern`` to
        ``s3://bucket/prefix/<relative path>``; returns the s3:// paths."""
        uploaded = []
        for path in sorted(Path(local_root).glob(pattern)):
            key = "/".join(part for part in (prefix.strip("/"),
                                             path.relative_to(local_root).as_posix()) if part)
            client.upload_file(str(path), bucket, key)
            uploaded.append(f"s3://{bucket}/{key}")
        return uploaded

    # ---- pointing a run at it

    def flags(self) -> List[str]:
        """Beam's S3 options for this endpoint (credentials stay in the environment)."""
        return ["--s3_endpoint_url", self.endpoint, "--s3_region_name", REGION]

    @staticmethod
    def env(access_key: str, secret_key: str) -> Dict[str, str]:
        """The environment a driver or worker reads the credentials from (as on AWS)."""
        return {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
                "AWS_DEFAULT_REGION": REGION}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="moto S3 server with byte counters")
    parser.add_argument("--port", type=int, default=0)
    serve(parser.parse_args().port)
