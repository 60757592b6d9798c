"""A local NV-CLIP NIM stand-in that enforces the API contract and injects faults (test code).

``NVClipContractServer`` serves on 127.0.0.1 (free port):

* ``POST /v1/embeddings`` — validates like NVIDIA (see ../shared/docs/nvclip-api.md): JSON object
  with only ``input``/``model``/``encoding_format`` (additionalProperties false), ``input`` a
  string or 1..64 strings, the configured model, ``encoding_format`` "float"; each ``data:``
  input must be ``data:image/{png|jpeg|jpg};base64,...`` with base64 under 180,000 characters,
  decodable, an image PIL can load, whose real format matches its MIME type. Refusals are 422
  problem-details bodies (``type``, ``title``, ``status``, ``detail``, ``instance``,
  ``requestId``). With ``api_key`` set, a missing or wrong ``Authorization: Bearer`` is 401;
  ``credits_exhausted`` gives 402.
* ``GET /v1/health/ready`` — 200, or 503 while ``ready`` is False (404 if ``health_route``
  is False, as on the hosted API).

Vectors are deterministic and derived from what each input *is*: for an image, the decoded
pixels (mode, size and pixel bytes after PIL decodes the data URL — so a test can recompute the
vector of any image from its DICOM file, independently of how the client sent it); for a text,
the string. That key → sha256 → seeded normal vector, scaled to norm 3 (the client must
normalise). ``expected_vector(input)`` gives the unit vector a client should store;
``image_vector(png_or_jpeg_bytes)`` the one for an image.

Faults (``inject(Fault(...))`` queues one per embeddings request, in order; a response fault
taken by a request that is then refused for its content waits for the next request; persistent
knobs are attributes): ``Fault.status(429, retry_after=...)``, ``Fault.status(500)``, ``Fault.slow(s)``,
``Fault.drop()``, ``Fault.wrong_dimension()``, ``Fault.wrong_count()``, ``Fault.non_finite()``,
``Fault.bad_index()``, ``Fault.not_json()``, ``Fault.echo_auth()`` (422 whose detail echoes the
Authorization header). ``reject_sha256`` (set of sha256 hex of raw image bytes or text) refuses
any request holding one of them with 422; ``reject_first_images = N`` adds the first N distinct
images seen to it. ``received`` collects every input string answered with a vector. ``latency_s`` delays every embeddings response.
``log`` records each embeddings request (batch size, status, fault); ``connections`` the client
ports seen (to check pooling); ``max_in_flight`` the most embeddings requests served at once.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Set

import numpy as np
from PIL import Image

MAX_INPUTS = 64
MAX_BASE64 = 180_000
ALLOWED_FIELDS = {"input", "model", "encoding_format"}
_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*);base64,(?P<b64>.*)$", re.DOTALL)
_PIL_FORMAT = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    status: int = 0
    retry_after: Optional[str] = None
    delay_s: float = 0.0

    @classmethod
    def http(cls, status: int, retry_after: Optional[str] = None) -> "Fault":
        return cls("status", status=status, retry_after=retry_after)

    @classmethod
    def slow(cls, delay_s: float) -> "Fault":
        return cls("slow", delay_s=delay_s)

    @classmethod
    def drop(cls) -> "Fault":
        return cls("drop")

    @classmethod
    def wrong_dimension(cls) -> "Fault":
        return cls("wrong_dimension")

    @classmethod
    def wrong_count(cls) -> "Fault":
        return cls("wrong_count")

    @classmethod
    def non_finite(cls) -> "Fault":
        return cls("non_finite")

    @classmethod
    def bad_index(cls) -> "Fault":
        return cls("bad_index")

    @classmethod
    def not_json(cls) -> "Fault":
        return cls("not_json")

    @classmethod
    def echo_auth(cls) -> "Fault":
        return cls("echo_auth")


@dataclasses.dataclass
class LoggedRequest:
    path: str
    batch_size: int
    status: int
    fault: str = ""


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def content_key(input_string: str) -> bytes:
    """What a vector is derived from: the decoded pixels of an image data URL, else the text."""
    match = _DATA_URL.match(input_string) if input_string.startswith("data:") else None
    if match is None:
        return b"text:" + input_string.encode()
    try:
        data = base64.b64decode(match.group("b64"), validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            header = f"image:{image.mode}:{image.size[0]}x{image.size[1]}:".encode()
            return header + hashlib.sha256(image.tobytes()).digest()
    except Exception:  # not an image (refused by validation anyway): fall back to the text
        return b"text:" + input_string.encode()


def raw_vector(input_string: str, dimension: int = 1024) -> np.ndarray:
    """The server's vector for one input string (norm 3, not unit)."""
    seed = int.from_bytes(hashlib.sha256(content_key(input_string)).digest()[:8], "big")
    vec = np.random.default_rng(seed).standard_normal(dimension)
    return vec / np.linalg.norm(vec) * 3.0


def expected_vector(input_string: str, dimension: int = 1024) -> np.ndarray:
    """What a correct client stores for ``input_string``: the unit-length float32 vector."""
    vec = raw_vector(input_string, dimension)
    return (vec / np.linalg.norm(vec)).astype(np.float32)


def image_vector(data: bytes, dimension: int = 1024) -> np.ndarray:
    """The unit vector a correct client stores for an image with these encoded bytes."""
    return expected_vector(image_input_string(data, "image/png"), dimension)


def image_input_string(data: bytes, mime: str) -> str:
    """The data URL a correct client sends for these bytes (built independently of it)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class _Refusal(Exception):
    def __init__(self, status: int, title: str, detail: str):
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


class LocalServer:
    """Start/stop a ``ThreadingHTTPServer`` on 127.0.0.1 (free port) whose handler class
    (``handler_base``, a subclass of ``_Handler``) sees this object as ``owner``. Used as a
    context manager; ``url`` is the base URL ending in /v1."""

    handler_base: type = None  # set by subclasses
    thread_name = "contract-server"
    _httpd: Optional[ThreadingHTTPServer] = None
    _thread: Optional[threading.Thread] = None

    def start(self):
        class Handler(self.handler_base):
            owner = self

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=self.thread_name,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"


class NVClipContractServer(LocalServer):
    thread_name = "nvclip-server"

    def __init__(self, api_key: Optional[str] = None, model: str = "nvidia/nvclip",
                 dimension: int = 1024, latency_s: float = 0.0):
        self.api_key = api_key
        self.model = model
        self.dimension = dimension
        self.latency_s = latency_s
        self.ready = True
        self.health_route = True  # False: /v1/health/ready is 404, like the hosted API
        self.credits_exhausted = False
        self.reject_sha256: Set[str] = set()
        self.reject_first_images = 0  # refuse (422, sticky) the first N distinct images seen
        self.received: Set[str] = set()  # every input string answered with a vector
        self.log: List[LoggedRequest] = []
        self.connections: Set[int] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: List[Fault] = []
        self._lock = threading.Lock()

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reject_image(self, data: bytes) -> None:
        """Answer 422 to any request that contains these image bytes."""
        self.reject_sha256.add(sha256_hex(data))

    @property
    def request_count(self) -> int:
        with self._lock:
            return len([r for r in self.log if r.path.endswith("/embeddings")])

    def batch_sizes(self) -> List[int]:
        with self._lock:
            return [r.batch_size for r in self.log if r.path.endswith("/embeddings")]

    def expected_vector(self, input_string: str) -> np.ndarray:
        return expected_vector(input_string, self.dimension)

    # -- request handling (called by the handler) -------------------------------------------
    def random_faults(self, rate: float, seed: int = 0) -> None:
        """From now on, a request with no queued fault meets, with probability ``rate``, one
        of 500, 429 (Retry-After: 1) or a dropped connection (seeded: the same sequence each
        run). For soak runs, where faults must keep coming for as long as the run lasts."""
        import random
        self._random_rate, self._random = rate, random.Random(seed)

    def _next_fault(self) -> Optional[Fault]:
        with self._lock:
            if self._faults:
                return self._faults.pop(0)
            rate = getattr(self, "_random_rate", 0.0)
            if rate and self._random.random() < rate:
                return self._random.choice(
                    [Fault.http(500), Fault.http(429, retry_after="1"), Fault.drop()])
            return None

    def _requeue(self, fault: Fault) -> None:
        with self._lock:
            self._faults.insert(0, fault)

    def _record(self, entry: LoggedRequest, port: int) -> None:
        with self._lock:
            self.log.append(entry)
            self.connections.add(port)

    def _check_auth(self, headers) -> None:
        if self.api_key is not None:
            if headers.get("Authorization", "") != f"Bearer {self.api_key}":
                raise _Refusal(401, "Unauthorized", "Authentication failed")
        if self.credits_exhausted:
            raise _Refusal(402, "Payment Required", "You have reached your limit of credits.")

    def _validate(self, raw: bytes) -> List[str]:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _Refusal(422, "Unprocessable Entity", "request body is not valid JSON")
        if not isinstance(body, dict):
            raise _Refusal(422, "Unprocessable Entity", "request body must be an object")
        extra = sorted(set(body) - ALLOWED_FIELDS)
        if extra:
            raise _Refusal(422, "Unprocessable Entity",
                           f"Additional properties are not allowed ({extra} were unexpected)")
        if body.get("model") != self.model:
            raise _Refusal(422, "Unprocessable Entity", f"unknown model {body.get('model')!r}")
        if body.get("encoding_format", "float") != "float":
            raise _Refusal(422, "Unprocessable Entity", "encoding_format must be 'float'")
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or \
                not all(isinstance(i, str) and i for i in inputs):
            raise _Refusal(422, "Unprocessable Entity", "input must be a non-empty string or "
                           "a list of non-empty strings")
        if len(inputs) > MAX_INPUTS:
            raise _Refusal(422, "Unprocessable Entity",
                           f"input has {len(inputs)} items; at most {MAX_INPUTS} allowed")
        for item in inputs:
            self._validate_item(item)
        return inputs

    def _validate_item(self, item: str) -> None:
        if not item.startswith("data:"):
            if sha256_hex(item) in self.reject_sha256:
                raise _Refusal(422, "Unprocessable Entity", "text could not be processed")
            return
        match = _DATA_URL.match(item)
        if match is None:
            raise _Refusal(422, "Unprocessable Entity", "malformed data URL")
        mime, b64 = match.group("mime"), match.group("b64")
        if mime not in _PIL_FORMAT:
            raise _Refusal(422, "Unprocessable Entity", f"unsupported image type {mime!r}")
        if len(b64) >= MAX_BASE64:
            raise _Refusal(422, "Unprocessable Entity",
                           f"inline image too large ({len(b64)} base64 characters)")
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise _Refusal(422, "Unprocessable Entity", "image is not valid base64")
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                real = image.format
        except Exception:
            raise _Refusal(422, "Unprocessable Entity", "image could not be decoded")
        if real != _PIL_FORMAT[mime]:
            raise _Refusal(422, "Unprocessable Entity",
                           f"image data is {real} but was labelled {mime}")
        digest = sha256_hex(data)
        with self._lock:
            if self.reject_first_images > 0 and digest not in self.reject_sha256:
                self.reject_first_images -= 1
                self.reject_sha256.add(digest)
        if digest in self.reject_sha256:
            raise _Refusal(422, "Unprocessable Entity", "image could not be processed")

    def _response(self, inputs: List[str], fault: Optional[Fault]) -> Dict[str, Any]:
        dimension = self.dimension + (8 if fault and fault.kind == "wrong_dimension" else 0)
        data = [{"index": i, "embedding": raw_vector(text, dimension).tolist(),
                 "object": "embedding"} for i, text in enumerate(inputs)]
        data.reverse()  # index, not position, carries the match
        if fault and fault.kind == "wrong_count":
            data = data[1:]
        if fault and fault.kind == "bad_index":
            data[0]["index"] = len(inputs) + 5  # out of range
        if fault and fault.kind == "non_finite":
            data[-1]["embedding"][0] = float("nan")  # the vector for index 0
        with self._lock:
            self.received.update(inputs)
        images = sum(1 for text in inputs if text.startswith("data:"))
        return {"object": "list", "data": data, "model": self.model,
                "usage": {"num_images": images, "prompt_tokens": 0, "total_tokens": 0}}


class _Handler(BaseHTTPRequestHandler):
    owner: NVClipContractServer
    protocol_version = "HTTP/1.1"  # keep-alive, so pooling is observable

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send_json(self, status: int, payload: Any, headers: Optional[Dict[str, str]] = None,
                   raw: Optional[bytes] = None) -> None:
        body = raw if raw is not None else json.dumps(payload, allow_nan=True).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _problem(self, refusal: _Refusal, headers: Optional[Dict[str, str]] = None) -> None:
        self._send_json(refusal.status, {
            "type": "about:blank", "title": refusal.title, "status": refusal.status,
            "detail": refusal.detail, "instance": f"/v2/nvcf/pexec/functions/{uuid.uuid4()}",
            "requestId": str(uuid.uuid4())}, headers)

    def do_GET(self) -> None:
        owner = self.owner
        if self.path.rstrip("/") == "/v1/health/ready" and owner.health_route:
            status = 200 if owner.ready else 503
            owner._record(LoggedRequest(self.path, 0, status), self.client_address[1])
            self._send_json(status, {"object": "health.response",
                                     "message": "ready" if owner.ready else "not ready"})
        else:
            self._send_json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        owner = self.owner
        with owner._lock:
            owner.in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
        try:
            self._post()
        finally:
            with owner._lock:
                owner.in_flight -= 1

    def _post(self) -> None:
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        port = self.client_address[1]
        if self.path.rstrip("/") != "/v1/embeddings":
            owner._record(LoggedRequest(self.path, 0, 404), port)
            self._send_json(404, {"detail": "Not Found"})
            return
        try:
            batch = json.loads(raw).get("input")
            batch_size = 1 if isinstance(batch, str) else len(batch or [])
        except Exception:
            batch_size = 0
        fault = None
        try:
            owner._check_auth(self.headers)
            fault = owner._next_fault()
            if fault is not None and fault.kind == "status":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
                owner._record(LoggedRequest(self.path, batch_size, fault.status, "status"), port)
                self._problem(_Refusal(fault.status, "Injected", f"injected {fault.status}"),
                              headers)
                return
            if fault is not None and fault.kind == "drop":
                owner._record(LoggedRequest(self.path, batch_size, 0, "drop"), port)
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if fault is not None and fault.kind == "echo_auth":
                raise _Refusal(422, "Unprocessable Entity", "bad request; headers were: "
                               f"Authorization: {self.headers.get('Authorization')}")
            inputs = owner._validate(raw)
        except _Refusal as refusal:
            if fault is not None and fault.kind != "echo_auth":
                owner._requeue(fault)  # a response fault hits the next request that succeeds
            owner._record(LoggedRequest(self.path, batch_size, refusal.status,
                                        fault.kind if fault else ""), port)
            self._problem(refusal)
            return
        owner._record(LoggedRequest(self.path, batch_size, 200, fault.kind if fault else ""),
                      port)
        delay = owner.latency_s + (fault.delay_s if fault is not None else 0.0)
        if delay:
            time.sleep(delay)
        if fault is not None and fault.kind == "not_json":
            self._send_json(200, None, raw=b"<html>gateway hiccup</html>")
            return
        self._send_json(200, owner._response(inputs, fault))


NVClipContractServer.handler_base = _Handler


def main(argv: Optional[List[str]] = None) -> int:
    """Run the server in its own process (benchmarks: no GIL shared with the client):
    ``python -m tests.nvclip_server --latency 0.3`` prints its URL on the first line."""
    import argparse
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--model", default="nvidia/nvclip")
    parser.add_argument("--fault-rate", type=float, default=0.0,
                        help="share of requests answered 500 / 429 / dropped (seeded)")
    args = parser.parse_args(argv)
    api_key = os.environ.get("NVCLIP_SERVER_API_KEY") or None
    with NVClipContractServer(api_key=api_key, model=args.model, latency_s=args.latency) as srv:
        if args.fault_rate:
            srv.random_faults(args.fault_rate)
        print(srv.url, flush=True)
        try:
            sys.stdin.read()  # until the parent closes our stdin
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
