"""OpenAI-compatible text embeddings (``POST {url}/embeddings``) for searching reports that another
tool embedded with OpenAI (e.g. ``text-embedding-3-large``, 3072-d).

In: query texts. Out: unit-length float32 vectors of the requested length, or a ``UserError``
that says why not. The request is ``{"input": [...], "model": ..., "encoding_format":
"float"|"base64"[, "dimensions": N]}``; the response ``{"object": "list", "data": [{"object":
"embedding", "index": i, "embedding": [...] | "<base64 float32>"}], "model": ..., "usage":
{...}}``. Transport, retries (429 with ``Retry-After``, 5xx, timeouts; tenacity backoff),
response checks and key redaction are the NV-CLIP client's (``EmbeddingsClient``); this module
adds OpenAI's body, base64 decoding and messages.

The API key comes only from the environment variable ``OPENAI_API_KEY``: never a flag, never
logged, never in an exception (the shared ``Redactor`` scrubs server text).
"""
from __future__ import annotations

import base64
import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlparse

import numpy as np

from dicomvec import defaults
from dicomvec.errors import UserError
from dicomvec.io.providers.base import FatalProviderError
from dicomvec.io.providers.openai_compatible import (Counters, EmbeddingsClient,
                                                     RejectedRequest, RetriesExhausted)
from dicomvec.io.providers.rate_limit import RateLimiter

API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_URL = defaults.TEXT_URL
DEFAULT_MODEL = defaults.TEXT_MODEL
#: native output length of OpenAI's embedding models (``dimensions`` may shorten text-embedding-3)
NATIVE_DIMENSIONS = {"text-embedding-3-large": 3072, "text-embedding-3-small": 1536,
                     "text-embedding-ada-002": 1536}
ENCODINGS = ("float", "base64")


@dataclasses.dataclass(frozen=True)
class OpenAISettings:
    """``url`` (base URL ending in /v1), ``model``, ``dimensions`` (sent only when set: OpenAI's
    ``dimensions`` shortens text-embedding-3 vectors), ``encoding_format``, timeouts and
    retries (as for NV-CLIP)."""

    url: str = DEFAULT_URL
    model: str = DEFAULT_MODEL
    dimensions: Optional[int] = None
    encoding_format: str = "float"
    timeout_s: float = defaults.TEXT_TIMEOUT_S
    connect_timeout_s: float = 10.0
    max_attempts: int = defaults.TEXT_MAX_ATTEMPTS
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 120.0

    def __post_init__(self):
        parsed = urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UserError(f"--text-url {self.url!r} must look like http(s)://host[:port]/v1")
        if not self.model or not self.model.strip():
            raise UserError("--text-model is empty")
        if self.dimensions is not None and int(self.dimensions) < 1:
            raise UserError(f"--text-dimensions must be positive, got {self.dimensions}")
        if self.encoding_format not in ENCODINGS:
            raise UserError(f"encoding_format must be one of {ENCODINGS}")
        if self.max_attempts < 1:
            raise UserError("--text-max-attempts must be at least 1")

    @property
    def expected_dimension(self) -> Optional[int]:
        """The vector length this model and setting give, when known without asking."""
        return self.dimensions or NATIVE_DIMENSIONS.get(self.model)


def api_key(model: str = DEFAULT_MODEL) -> str:
    """The key from ``OPENAI_API_KEY``, or a ``UserError`` saying how to set it."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise UserError(f"{API_KEY_ENV} is not set: export {API_KEY_ENV}=... to embed the "
                        f"query with {model} (the key is never a flag)")
    return key


class OpenAIClient(EmbeddingsClient):
    """``EmbeddingsClient`` with OpenAI's request body, base64 decoding and messages."""

    service = "OpenAI embeddings"

    def request_body(self, inputs: Sequence[str]) -> Dict[str, Any]:
        body: Dict[str, Any] = {"input": list(inputs), "model": self.settings.model,
                                "encoding_format": self.settings.encoding_format}
        if self.settings.dimensions:
            body["dimensions"] = int(self.settings.dimensions)
        return body

    def decode_embedding(self, value: Any) -> Any:
        """A float list, or (``encoding_format`` base64) little-endian float32 bytes."""
        if isinstance(value, str):
            try:
                raw = base64.b64decode(value, validate=True)
            except ValueError:
                raise ValueError("embedding is a string but not base64") from None
            if len(raw) % 4:
                raise ValueError(f"base64 embedding has {len(raw)} bytes, not float32s")
            return np.frombuffer(raw, dtype="<f4")
        return value

    def fatal(self, status: int, detail: str) -> Optional[FatalProviderError]:
        if status == 401:
            return FatalProviderError(f"{self.service} rejected the API key (401): check "
                                      f"{API_KEY_ENV}")
        if status == 404:
            return FatalProviderError(f"{self.service}: model or URL not found (404) at "
                                      f"{self.embeddings_url}: check --text-model "
                                      f"({self.settings.model!r}) and --text-url"
                                      + (f" ({detail})" if detail else ""))
        return super().fatal(status, detail)


class OpenAITextEmbedder:
    """Embeds query texts; a context manager (``with OpenAITextEmbedder(s, dim) as e``).

    ``dimension``: the length the caller needs (the reports table's vector column); a response
    of another length is a ``UserError`` naming both, never a silent mismatch.
    """

    def __init__(self, settings: OpenAISettings, dimension: int):
        self.settings = settings
        self.dimension = int(dimension)
        self.counters = Counters()
        self._client: Optional[OpenAIClient] = None

    def __enter__(self) -> "OpenAITextEmbedder":
        key = api_key(self.settings.model)
        self._client = OpenAIClient(self.settings, key, RateLimiter(0), self.counters,
                                    self.dimension)
        return self

    def __exit__(self, *exc) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def embed(self, texts: Sequence[str]) -> List[np.ndarray]:
        """One unit vector per text (each non-empty), in order; raises ``UserError``."""
        if self._client is None:
            raise RuntimeError("use OpenAITextEmbedder as a context manager")
        texts = [(t or "").strip() for t in texts]
        if not texts or not all(texts):
            raise UserError("the query text is empty")
        try:
            results = self._client.embed(texts)
        except (RejectedRequest, RetriesExhausted) as exc:
            raise UserError(f"could not embed the query: {exc.message}") from None
        except FatalProviderError as exc:
            raise UserError(str(exc)) from None
        out = []
        for result in results:
            if not result.ok:
                raise UserError(f"{self._client.service} ({self.settings.model}) gave an "
                                f"unusable query vector: {result.error_message} (the reports' "
                                f"vector column holds {self.dimension}-d vectors)")
            out.append(result.vector)
        return out

    def stats(self) -> Dict[str, float]:
        return self.counters.snapshot()
