"""The OpenAI-compatible embeddings transport: ``POST {url}/embeddings``, one request (≤ 64
input strings) with retries.

``EmbeddingsClient`` speaks the embeddings request/response shape NVIDIA's NIM shares with
OpenAI's API (``{"input": [...], "model": ..., "encoding_format": ...}`` in; ``{"data":
[{"index": i, "embedding": [...]}], "usage": {...}}`` out); ``nvclip.NVClipClient`` is it with
NV-CLIP's messages, and ``openai_client.OpenAIClient`` with OpenAI's.

In: a list of input strings (image data URLs or texts). Out: one ``EmbeddingResult`` per input,
matched by the response's ``index``, each vector checked (dimension, finite, non-zero) and
L2-normalised. What can go wrong is turned into one of:

* ``RejectedRequest`` (400/413/422, with NVIDIA's problem ``title``/``detail``): the request's
  content is at fault, retrying the same request is pointless; the caller bisects.
* ``RetriesExhausted``: 429, 5xx, timeouts, dropped connections or malformed responses (wrong
  count, missing indices, not JSON) persisted for ``max_attempts`` attempts. Retries use
  exponential backoff with jitter (tenacity) and honour ``Retry-After`` (seconds or HTTP date).
* ``FatalProviderError``: 401 (bad key), 402 (no credits), 403, 404 (wrong URL/model): nothing
  can succeed, the job stops with a plain message.

The API key only ever travels in the ``Authorization`` header. Every message built from outside
text (server bodies, ``requests`` exceptions) goes through ``Redactor`` first, and ``requests``
exceptions are never re-raised or chained (their ``.request`` carries the headers).
"""
from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import requests
from requests.adapters import HTTPAdapter
from tenacity import (RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt,
                      wait_exponential, wait_random)

from dicomvec.io.providers.base import EmbeddingResult, FatalProviderError, unit_vector
from dicomvec.io.providers.rate_limit import RateLimiter

logger = logging.getLogger(__name__)

#: statuses whose request is re-sent after a backoff
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: statuses meaning "something in this request's inputs is bad": bisect to find it
BISECTABLE_STATUSES = frozenset({400, 413, 422})
MAX_MESSAGE_CHARS = 500


class Redactor:
    """Removes the API key (and any bearer token) from text before it is logged or stored."""

    _BEARER = re.compile(r"(?i)bearer\s+[^\s'\",}]+")

    def __init__(self, secret: Optional[str]):
        self._secret = secret or ""

    def __call__(self, text: Any) -> str:
        text = str(text)
        if self._secret:
            text = text.replace(self._secret, "[REDACTED]")
        return self._BEARER.sub("Bearer [REDACTED]", text)[:MAX_MESSAGE_CHARS]


class Counters:
    """Thread-safe named counters (requests, retries, ...)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values: Dict[str, float] = {}

    def add(self, name: str, amount: float = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def get(self, name: str) -> float:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> Dict[str, float]:
        with self._lock:
            return dict(self._values)


class TransientError(Exception):
    """Worth retrying: rate limit, server error, timeout, dropped connection, bad response."""

    def __init__(self, error_type: str, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after


class RetriesExhausted(Exception):
    def __init__(self, error_type: str, message: str, attempts: int):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.attempts = attempts


class RejectedRequest(Exception):
    """The server refused the request's content (4xx other than auth/credits)."""

    def __init__(self, status: int, title: str, detail: str, service: str = "NV-CLIP"):
        self.status = status
        self.title = title
        self.detail = detail
        self.bisectable = status in BISECTABLE_STATUSES
        text = f"{service} rejected the input ({status}"
        text += f" {title})" if title else ")"
        if detail:
            text += f": {detail}"
        self.message = text
        super().__init__(text)


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """``Retry-After`` header (delta seconds or HTTP date) → seconds to wait, or None."""
    if value is None or not str(value).strip():
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def problem_detail(response: requests.Response) -> Tuple[str, str]:
    """(title, detail) from an NVCF problem-details / FastAPI error body; raw text otherwise."""
    try:
        body = response.json()
    except ValueError:
        return response.reason or "", (response.text or "").strip()
    if not isinstance(body, dict):
        return response.reason or "", str(body)
    error = body.get("error")
    if isinstance(error, dict):  # OpenAI: {"error": {"message", "type", "param", "code"}}
        return (str(error.get("type") or response.reason or ""),
                str(error.get("message") or error.get("code") or ""))
    title = str(body.get("title") or response.reason or "")
    detail = body.get("detail", "")
    if isinstance(detail, list):  # FastAPI validation errors: [{"loc": [...], "msg": ...}]
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d)
                           for d in detail)
    return title, str(detail or body.get("message") or body.get("error") or "")


class EmbeddingsClient:
    """Pooled, thread-safe client for one embeddings endpoint. ``close()`` when done.

    Subclasses name the service for messages (``service``) and say what a fatal status means
    for their users (``fatal``); ``request_body`` and ``decode_embedding`` adapt the shape.
    ``settings``: the provider's (``url`` ending in /v1, ``model``, ``connect_timeout_s``,
    ``timeout_s``, ``max_attempts``, ``backoff_base_s``, ``backoff_max_s``,
    ``max_retry_after_s``); ``dimension``: the vector length wanted; ``pool_size``: connections.
    """

    #: the service's name in messages and logs
    service = "embeddings API"

    def __init__(self, settings, api_key: Optional[str], limiter: RateLimiter,
                 counters: Counters, dimension: int, pool_size: int = 1):
        self.settings = settings
        self.dimension = dimension
        self.limiter = limiter
        self.counters = counters
        self.redact = Redactor(api_key)
        self.embeddings_url = settings.url.rstrip("/") + "/embeddings"
        self._headers = {"Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.session = requests.Session()
        self.session.trust_env = True
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(1, pool_size),
                              max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # base·2^(n-1), capped, plus up to base of jitter
        self._backoff = (wait_exponential(multiplier=settings.backoff_base_s,
                                          max=settings.backoff_max_s)
                         + wait_random(0, settings.backoff_base_s))

    def close(self) -> None:
        self.session.close()

    # -- probes -----------------------------------------------------------------------------
    def get_status(self, path: str) -> Tuple[Optional[int], str]:
        """GET ``{endpoint}/{path}`` → (status or None, plain text reason). Never raises."""
        url = self.settings.url.rstrip("/") + "/" + path.lstrip("/")
        try:
            response = self.session.get(url, headers=self._headers,
                                        timeout=(self.settings.connect_timeout_s,
                                                 self.settings.timeout_s))
        except requests.RequestException as exc:
            return None, self.redact(_root_cause(exc))
        title, detail = problem_detail(response) if response.status_code >= 400 else ("", "")
        return response.status_code, self.redact(" ".join(t for t in (title, detail) if t))

    # -- embeddings -------------------------------------------------------------------------
    def embed(self, inputs: Sequence[str]) -> List[EmbeddingResult]:
        """One result per input, in order (successes, or per-input invalid-vector failures).

        Raises RejectedRequest, RetriesExhausted or FatalProviderError (see module docstring).
        """
        if not inputs:
            return []
        body = self.request_body(inputs)
        attempts = 0
        retrying = Retrying(stop=stop_after_attempt(max(1, self.settings.max_attempts)),
                            wait=self._wait, retry=retry_if_exception_type(TransientError),
                            before_sleep=self._before_sleep, reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    vectors = self._attempt(body, len(inputs))
        except TransientError as exc:
            raise RetriesExhausted(exc.error_type, f"{exc.message} (gave up after {attempts} "
                                   f"attempt{'s' if attempts != 1 else ''})", attempts) from None
        results = []
        for value in vectors:
            if isinstance(value, str):
                results.append(EmbeddingResult.failure("InvalidEmbedding", value,
                                                       retryable=False, attempts=attempts))
            else:
                results.append(EmbeddingResult.success(value, attempts=attempts))
        return results

    def request_body(self, inputs: Sequence[str]) -> Dict[str, Any]:
        """The JSON body of one request."""
        return {"input": list(inputs), "model": self.settings.model, "encoding_format": "float"}

    def decode_embedding(self, value: Any) -> Any:
        """One response item's ``embedding`` → a sequence of numbers (``unit_vector`` checks)."""
        return value

    def fatal(self, status: int, detail: str) -> Optional[FatalProviderError]:
        """The job-stopping error for ``status`` (401/402/403/404), or None when not fatal."""
        if status == 401:
            return FatalProviderError(f"{self.service} rejected the API key (401)")
        if status == 402:
            return FatalProviderError(f"{self.service} reports no credits left (402): "
                                      f"{detail or 'add credits to the account'}")
        if status == 403:
            return FatalProviderError(f"{self.service} refused access (403): the API key may "
                                      f"not be allowed to use model {self.settings.model!r}")
        if status == 404:
            return FatalProviderError(f"{self.service} endpoint or model not found (404) at "
                                      f"{self.embeddings_url}: {detail or 'check URL and model'}")
        return None

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(exc.retry_after, self.settings.max_retry_after_s)
        return self._backoff(state)

    def _before_sleep(self, state: RetryCallState) -> None:
        self.counters.add("retries")
        exc = state.outcome.exception() if state.outcome else None
        logger.warning("%s request failed (%s); retry %d of %d in %.1f s", self.service,
                       getattr(exc, "message", type(exc).__name__), state.attempt_number,
                       self.settings.max_attempts - 1, state.next_action.sleep)

    def _attempt(self, body: Dict[str, Any], count: int) -> List[Any]:
        """One HTTP request. Returns per-input unit vectors or error strings."""
        self.limiter.acquire()
        self.counters.add("requests")
        try:
            response = self.session.post(self.embeddings_url, json=body, headers=self._headers,
                                         timeout=(self.settings.connect_timeout_s,
                                                  self.settings.timeout_s))
        except requests.Timeout:
            self.counters.add("timeouts")
            raise TransientError("Timeout", f"{self.service} did not answer within "
                                 f"{self.settings.timeout_s:g} s") from None
        except requests.ConnectionError as exc:
            self.counters.add("connection_errors")
            raise TransientError("ConnectionError", self.redact(
                f"connection to {self.service} failed: {_root_cause(exc)}")) from None
        except requests.RequestException as exc:
            raise TransientError(type(exc).__name__,
                                 self.redact(f"{self.service} request failed: {exc}")) from None
        with response:
            return self._handle(response, count)

    def _handle(self, response: requests.Response, count: int) -> List[Any]:
        status = response.status_code
        if status == 200:
            return self._parse(response, count)
        title, detail = (self.redact(t) for t in problem_detail(response))
        fatal = self.fatal(status, detail)
        if fatal is not None:
            raise fatal
        if status == 429:
            self.counters.add("rate_limited")
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None:
                self.limiter.hold(min(retry_after, self.settings.max_retry_after_s))
            raise TransientError("RateLimited", f"{self.service} rate limit hit (429)",
                                 retry_after)
        if status in TRANSIENT_STATUSES or status >= 500:
            text = f"{self.service} server error ({status}"
            text += f" {title})" if title else ")"
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise TransientError("ServerError", text + (f": {detail}" if detail else ""),
                                 retry_after)
        raise RejectedRequest(status, title, detail, self.service)

    def _parse(self, response: requests.Response, count: int) -> List[Any]:
        try:
            payload = response.json()
        except ValueError:
            raise TransientError("BadResponse", f"{self.service} response is not JSON") \
                from None
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise TransientError("BadResponse", f"{self.service} response has no 'data' list")
        by_index: Dict[int, Any] = {}
        for item in data:
            index = item.get("index") if isinstance(item, dict) else None
            if not isinstance(index, int) or isinstance(index, bool) \
                    or not 0 <= index < count or index in by_index:
                raise TransientError("BadResponse", f"{self.service} response has an invalid or "
                                     f"repeated index {index!r} for {count} inputs")
            by_index[index] = item.get("embedding")
        if len(by_index) != count:
            raise TransientError("BadResponse", f"{self.service} response has {len(by_index)} "
                                 f"vectors for {count} inputs")
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        for key in ("num_images", "prompt_tokens", "total_tokens"):
            if isinstance(usage.get(key), (int, float)):
                self.counters.add(f"usage_{key}", usage[key])
        out: List[Any] = []
        for index in range(count):
            try:
                out.append(unit_vector(self.decode_embedding(by_index[index]),
                                       self.dimension))
            except (ValueError, TypeError) as exc:
                out.append(f"{self.service} returned an unusable vector: {exc}")
        return out


def _root_cause(exc: BaseException) -> str:
    """The innermost cause's class and text (e.g. 'RemoteDisconnected: ...'), without URLs'
    query strings or headers."""
    seen = set()
    while True:
        nxt = exc.__cause__ or exc.__context__ or (exc.args[0] if exc.args and isinstance(
            exc.args[0], BaseException) else None)
        reason = getattr(exc, "reason", None)
        if isinstance(reason, BaseException):
            nxt = reason
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(exc))
        exc = nxt
    return f"{type(exc).__name__}: {exc}"
