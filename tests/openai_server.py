"""A local OpenAI embeddings stand-in that enforces the API's shape and injects faults (test code).

``OpenAIContractServer`` serves ``POST /v1/embeddings`` on 127.0.0.1 (free port), checking what
OpenAI's API documents:

* ``Authorization: Bearer <key>`` (when ``api_key`` is set): else 401 ``invalid_api_key``;
* a JSON object with only ``input``, ``model``, ``encoding_format``, ``dimensions``, ``user``;
  ``model`` one of the served models (else 404 ``model_not_found``); ``input`` a non-empty
  string or a list of 1..2048 non-empty strings; ``encoding_format`` ``float`` (default) or
  ``base64``; ``dimensions`` a positive integer no larger than the model's, and only for
  ``text-embedding-3-*`` models. Anything else is 400 with OpenAI's error body
  ``{"error": {"message", "type": "invalid_request_error", "param", "code"}}``.

The answer is ``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding":
[...] or base64 float32}], "model": ..., "usage": {"prompt_tokens", "total_tokens"}}``.

Vectors are deterministic: text → sha256 → seeded normal vector of the model's length, unit
length; ``dimensions`` = n keeps the first n values and renormalises (as OpenAI's shortening
does). ``vector(text, dimensions)`` gives it to tests.

Faults (``inject``, one per embeddings request, in order; ``Fault`` from the NV-CLIP server):
``Fault.http(429, retry_after="0")``, ``Fault.http(500)``/``503``, ``Fault.wrong_dimension()``,
``Fault.not_json()``. ``log`` records (path, status, fault) per request; ``bodies`` the parsed
request bodies answered 200.
"""
from __future__ import annotations

import base64
import json
import threading
from typing import Any, Dict, List, Optional

import numpy as np

from tests.nvclip_server import Fault, LocalServer, LoggedRequest, _Handler, raw_vector

MODELS = {"text-embedding-3-large": 3072, "text-embedding-3-small": 1536,
          "text-embedding-ada-002": 1536}
ALLOWED_FIELDS = {"input", "model", "encoding_format", "dimensions", "user"}
MAX_INPUTS = 2048

__all__ = ["Fault", "OpenAIContractServer", "MODELS"]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 code: Optional[str] = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = \
            status, message, param, code, kind


def vector(text: str, dimensions: int = 3072, native: int = 3072) -> np.ndarray:
    """The server's unit vector for ``text`` (first ``dimensions`` of the native one)."""
    full = raw_vector(text, native)[:dimensions]
    return (full / np.linalg.norm(full)).astype(np.float32)


class OpenAIContractServer(LocalServer):
    thread_name = "openai-server"

    def __init__(self, api_key: Optional[str] = None):
        self.api_key = api_key
        self.log: List[LoggedRequest] = []
        self.bodies: List[Dict[str, Any]] = []
        self._faults: List[Fault] = []
        self._lock = threading.Lock()
        # bookkeeping the shared handler base expects
        self.in_flight = 0
        self.max_in_flight = 0

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def statuses(self) -> List[int]:
        with self._lock:
            return [entry.status for entry in self.log]

    @staticmethod
    def vector(text: str, dimensions: Optional[int] = None,
               model: str = "text-embedding-3-large") -> np.ndarray:
        native = MODELS[model]
        return vector(text, dimensions or native, native)

    # -- request handling -------------------------------------------------------------------
    def _next_fault(self) -> Optional[Fault]:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def _record(self, path: str, size: int, status: int, fault: str = "") -> None:
        with self._lock:
            self.log.append(LoggedRequest(path, size, status, fault))

    def _check_auth(self, headers) -> None:
        if self.api_key is not None and \
                headers.get("Authorization", "") != f"Bearer {self.api_key}":
            raise _BadRequest(401, "Incorrect API key provided.", code="invalid_api_key")

    def _validate(self, raw: bytes) -> Dict[str, Any]:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _BadRequest(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            raise _BadRequest(400, "The request body must be a JSON object.")
        extra = sorted(set(body) - ALLOWED_FIELDS)
        if extra:
            raise _BadRequest(400, f"Unrecognized request argument supplied: {extra[0]}",
                              param=extra[0])
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest(400, "you must provide a model parameter", param="model")
        if model not in MODELS:
            raise _BadRequest(404, f"The model `{model}` does not exist or you do not have "
                              "access to it.", param="model", code="model_not_found")
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or len(inputs) > MAX_INPUTS or \
                not all(isinstance(i, str) and i for i in inputs):
            raise _BadRequest(400, "'input' must be a non-empty string or an array of 1 to "
                              f"{MAX_INPUTS} non-empty strings", param="input")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise _BadRequest(400, f"'{encoding}' is not one of ['float', 'base64'] - "
                              "'encoding_format'", param="encoding_format")
        dimensions = body.get("dimensions")
        if dimensions is not None:
            if not model.startswith("text-embedding-3"):
                raise _BadRequest(400, "This model does not support specifying dimensions.",
                                  param="dimensions")
            if not isinstance(dimensions, int) or isinstance(dimensions, bool) or \
                    not 1 <= dimensions <= MODELS[model]:
                raise _BadRequest(400, f"dimensions must be an integer in 1..{MODELS[model]}",
                                  param="dimensions")
        return {"model": model, "input": inputs, "encoding_format": encoding,
                "dimensions": dimensions}

    def _response(self, request: Dict[str, Any], fault: Optional[Fault]) -> Dict[str, Any]:
        native = MODELS[request["model"]]
        length = request["dimensions"] or native
        if fault is not None and fault.kind == "wrong_dimension":
            length = max(1, length // 2)
        data = []
        for index, text in enumerate(request["input"]):
            vec = vector(text, length, native if length <= native else length)
            if request["encoding_format"] == "base64":
                embedding: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
            else:
                embedding = [float(v) for v in vec]
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(text.split()) for text in request["input"])
        return {"object": "list", "data": data, "model": request["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class _OpenAIHandler(_Handler):
    owner: OpenAIContractServer

    def _error(self, error: _BadRequest, headers: Optional[Dict[str, str]] = None) -> None:
        self._send_json(error.status, {"error": {"message": error.message, "type": error.kind,
                                                 "param": error.param, "code": error.code}},
                        headers)

    def do_GET(self) -> None:
        self._error(_BadRequest(404, f"Invalid URL (GET {self.path})"))

    def _post(self) -> None:
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") != "/v1/embeddings":
            owner._record(self.path, 0, 404)
            self._error(_BadRequest(404, f"Invalid URL (POST {self.path})"))
            return
        fault = None
        try:
            owner._check_auth(self.headers)
            request = owner._validate(raw)
            fault = owner._next_fault()
            if fault is not None and fault.kind == "status":
                owner._record(self.path, len(request["input"]), fault.status, "status")
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
                kind = "rate_limit_exceeded" if fault.status == 429 else "server_error"
                self._error(_BadRequest(fault.status, f"injected {fault.status}", kind=kind),
                            headers)
                return
        except _BadRequest as error:
            owner._record(self.path, 0, error.status)
            self._error(error)
            return
        owner._record(self.path, len(request["input"]), 200, fault.kind if fault else "")
        with owner._lock:
            owner.bodies.append(json.loads(raw))
        if fault is not None and fault.kind == "not_json":
            self._send_json(200, None, raw=b"<html>gateway hiccup</html>")
            return
        self._send_json(200, owner._response(request, fault))


OpenAIContractServer.handler_base = _OpenAIHandler
