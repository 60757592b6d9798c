"""``nvclip``: NVIDIA NV-CLIP (ViT-H, 1024-d) through the NIM embeddings API, hosted or self-hosted.

Flow: ``embed_images(images)`` → each image checked (PNG/JPEG bytes, base64 under the inline
limit) and turned into a ``data:image/...;base64,`` URL → requests of at most ``request_size``
(≤ 64) inputs, sent ``concurrency`` at a time over pooled connections, each under the client
rate limit and retried on transient errors → one ``EmbeddingResult`` per image, in input order.
A request refused for its content (400/413/422) is bisected until the bad inputs are isolated:
good neighbours get their vectors, bad ones a non-retryable failure carrying NVIDIA's problem
title/detail. 401/402/403/404 raise ``FatalProviderError`` (the job stops).

Settings: ``NVClipSettings`` (``ProviderConfig.settings`` keys, their defaults from
``dicomvec.defaults``; what each means and which ``--nvclip-*`` flag sets it: docs/nvclip.md).

The API key comes only from the environment variable ``NVIDIA_API_KEY``, read in ``setup()``
(on the worker). It is required for the hosted URL (``*.api.nvidia.com``) and optional for a
self-hosted NIM. It is sent only in the ``Authorization`` header and never appears in logs,
exception messages, stats or results.

Rate limit: per worker *process* (all provider instances in one Python process share one
limiter per URL and rate); a cluster sends at most ``max_requests_per_minute × worker
processes`` requests per minute (docs/nvclip.md).

Throughput: one ``embed_images`` call with N images sends ceil(N / request_size) requests in
parallel (up to ``concurrency``). To keep several requests in flight with batches of 64, either
give the provider batches of ``concurrency × 64`` images or use ``submit_images`` (returns a
``Future``) to keep several batches pending.

Texts (``embed_texts``): CLIP's context is 77 tokens including start and end markers. Token
counts are approximated without the BPE vocabulary: the text is split like CLIP's pre-tokenizer
(letter runs, single digits, punctuation runs); a letter run of n letters counts ceil(n/4)
tokens, a punctuation run one token per character. This over-counts for common English words,
so truncation (at a piece boundary, with a warning) errs on the short side.
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import dataclasses
import logging
import math
import os
import re
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlparse

from dicomvec import defaults
from dicomvec.io.providers.base import (EmbeddingProvider, EmbeddingResult, EncodedImage,
                                        FatalProviderError, ProviderConfig)
from dicomvec.io.providers.openai_compatible import (Counters, EmbeddingsClient,
                                                     Redactor, RejectedRequest,
                                                     RetriesExhausted)
from dicomvec.io.providers.rate_limit import shared_rate_limiter

logger = logging.getLogger(__name__)

HOSTED_URL = defaults.NVCLIP_URL
API_KEY_ENV = "NVIDIA_API_KEY"
HOSTED_DEFAULT_RPM = 40.0
MAX_INPUTS_PER_REQUEST = 64
REJECTED = "NVClipRejected"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class NVClipClient(EmbeddingsClient):
    """The NIM endpoint of NV-CLIP: fatal statuses name NVIDIA_API_KEY and the --nvclip-* flags."""

    service = "NV-CLIP"

    def fatal(self, status: int, detail: str) -> Optional[FatalProviderError]:
        if status == 401:
            return FatalProviderError("NV-CLIP rejected the API key (401): check NVIDIA_API_KEY")
        if status == 404:
            return FatalProviderError(f"NV-CLIP endpoint or model not found (404) at "
                                      f"{self.embeddings_url}: check --nvclip-url and "
                                      f"--nvclip-model ({self.settings.model!r})")
        return super().fatal(status, detail)


@dataclasses.dataclass(frozen=True)
class NVClipSettings:
    """Typed view of ``ProviderConfig.settings`` (see the module docstring for each key)."""

    url: str = HOSTED_URL
    model: str = defaults.NVCLIP_MODEL
    concurrency: int = defaults.NVCLIP_CONCURRENCY
    max_requests_per_minute: Optional[float] = None
    timeout_s: float = defaults.NVCLIP_TIMEOUT_S
    max_attempts: int = defaults.NVCLIP_MAX_ATTEMPTS
    connect_timeout_s: float = 10.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 300.0
    dimension: int = defaults.DIMENSION
    request_size: int = MAX_INPUTS_PER_REQUEST
    max_base64_chars: int = defaults.MAX_BASE64_CHARS
    max_text_tokens: int = defaults.CLIP_CONTEXT_TOKENS
    cost_per_1k_images: float = 0.0
    max_rejected_batches: int = 3

    @classmethod
    def from_mapping(cls, settings: Optional[Mapping[str, Any]]) -> "NVClipSettings":
        """Unknown keys are an error (a typo must not silently fall back to a default)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings or {}) - set(fields))
        if unknown:
            raise ValueError(f"unknown nvclip setting(s) {unknown}; known: {sorted(fields)}")
        values: Dict[str, Any] = {}
        for key, value in (settings or {}).items():
            if value is None:
                continue
            kind = {int: int, float: float, str: str}.get(type(fields[key].default), float)
            try:
                values[key] = kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"nvclip setting {key}={value!r} is not a {kind.__name__}")
        made = cls(**values)
        made.validate()
        return made

    def validate(self) -> None:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"nvclip url {self.url!r} must look like http(s)://host[:port]/v1")
        if not 1 <= self.request_size <= MAX_INPUTS_PER_REQUEST:
            raise ValueError(f"nvclip request_size must be 1..{MAX_INPUTS_PER_REQUEST}")
        for key in ("concurrency", "max_attempts", "dimension", "max_base64_chars"):
            if getattr(self, key) < 1:
                raise ValueError(f"nvclip {key} must be at least 1")
        if self.max_text_tokens < 3:
            raise ValueError("nvclip max_text_tokens must be at least 3")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("nvclip timeouts must be positive")

    @property
    def hosted(self) -> bool:
        host = (urlparse(self.url).hostname or "").lower()
        return host == "api.nvidia.com" or host.endswith(".api.nvidia.com")

    @property
    def requests_per_minute(self) -> float:
        """Effective limit: the setting, else 40 for the hosted API and 0 (none) otherwise."""
        if self.max_requests_per_minute is not None:
            return max(0.0, self.max_requests_per_minute)
        return HOSTED_DEFAULT_RPM if self.hosted else 0.0


# -- inputs -----------------------------------------------------------------------------------
def sniff_image_mime(data: bytes) -> Optional[str]:
    """The MIME type the bytes really are (PNG or JPEG), else None."""
    if data.startswith(_PNG_MAGIC):
        return "image/png"
    if data.startswith(_JPEG_MAGIC):
        return "image/jpeg"
    return None


def image_data_url(image: EncodedImage, max_base64_chars: int
                   ) -> Tuple[Optional[str], Optional[EmbeddingResult]]:
    """(data URL, None) or (None, non-retryable failure) for one encoded image.

    The MIME type is taken from the bytes, not the label, so PNG bytes are never sent as JPEG.
    """
    if not image.data:
        return None, EmbeddingResult.failure("EmptyImage", "the encoded image has no bytes")
    mime = sniff_image_mime(image.data)
    if mime is None:
        return None, EmbeddingResult.failure(
            "UnsupportedImageType", f"NV-CLIP accepts PNG or JPEG; these bytes (labelled "
            f"{image.mime!r}) are neither")
    b64 = base64.b64encode(image.data).decode("ascii")
    if len(b64) >= max_base64_chars:
        return None, EmbeddingResult.failure(
            "ImageTooLarge", f"image is {len(b64):,} base64 characters; NV-CLIP accepts inline "
            f"images under {max_base64_chars:,}: encode it smaller (fewer pixels or JPEG)")
    return f"data:{mime};base64,{b64}", None


_CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)


def approx_clip_tokens(text: str) -> List[Tuple[int, int]]:
    """[(end offset, running token estimate)] per pre-token piece (see module docstring)."""
    out, total = [], 0
    for match in _CLIP_PIECES.finditer(text):
        piece = match.group(0)
        if piece[0].isalpha() and not piece.startswith("'"):
            total += math.ceil(len(piece) / 4)
        elif piece[0].isdigit() or piece.startswith("'"):
            total += 1
        else:
            total += len(piece)
        out.append((match.end(), total))
    return out


def truncate_for_clip(text: str, max_tokens: int = defaults.CLIP_CONTEXT_TOKENS
                      ) -> Tuple[str, bool]:
    """(text cut to fit ``max_tokens`` including CLIP's start/end markers, whether it was cut)."""
    budget = max_tokens - 2
    pieces = approx_clip_tokens(text)
    if not pieces or pieces[-1][1] <= budget:
        return text, False
    end = 0
    for piece_end, running in pieces:
        if running > budget:
            break
        end = piece_end
    return text[:end].rstrip(), True


def cost_line(stats: Mapping[str, float], cost_per_1k_images: float = 0.0) -> str:
    """The summary's NV-CLIP line from summed ``stats()`` counters, e.g. 'NV-CLIP: 1,234
    images, 0 texts, 20 requests, 1 retries, 2 failures; est. cost $0.12 at $0.1 per 1K images'
    (or '...; cost unknown (...)' when no price is set)."""
    images = int(stats.get("images_embedded", 0))
    head = (f"NV-CLIP: {images:,} images, {int(stats.get('texts_embedded', 0)):,} texts, "
            f"{int(stats.get('requests', 0)):,} requests, {int(stats.get('retries', 0)):,} "
            f"retries, {int(stats.get('failures', 0)):,} failures")
    price = float(cost_per_1k_images or 0)
    if price <= 0:
        return head + "; cost unknown (set --nvclip-cost-per-1k-images to estimate it)"
    return head + f"; est. cost ${images / 1000 * price:,.2f} at ${price:g} per 1K images"


# -- provider ---------------------------------------------------------------------------------
class NVClipProvider(EmbeddingProvider):
    """NV-CLIP via NIM. See the module docstring for settings, limits and failure handling."""

    name = "nvclip"
    semantic = True
    max_batch_size = MAX_INPUTS_PER_REQUEST

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        self.settings = NVClipSettings.from_mapping(config.settings)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._counters = Counters()
        self._client: Optional[NVClipClient] = None
        self._pool: Optional[cf.ThreadPoolExecutor] = None
        self._redact = Redactor(None)
        self._state_lock = threading.Lock()
        self._rejected_run = 0

    # Beam pickles providers inside DoFns: never ship threads, sockets or the key.
    def __getstate__(self) -> Dict[str, Any]:
        return {"config": self.config, "settings": self.settings}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.config = state["config"]
        self.settings = state["settings"]
        self._init_runtime()

    def __repr__(self) -> str:
        return f"NVClipProvider(url={self.settings.url!r}, model={self.settings.model!r})"

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def dimension(self) -> int:
        return self.settings.dimension

    @property
    def destination(self) -> str:
        where = urlparse(self.settings.url)
        if self.settings.hosted:
            return f"NVIDIA hosted API ({where.hostname}), a third-party service"
        port = where.port or (443 if where.scheme == "https" else 80)
        return f"self-hosted NIM at {where.hostname}:{port}"

    @property
    def third_party(self) -> bool:
        return self.settings.hosted

    # -- lifecycle --------------------------------------------------------------------------
    def preflight(self) -> None:
        self._api_key()

    def _api_key(self) -> Optional[str]:
        """The key from the environment; FatalProviderError when the hosted API lacks one."""
        api_key = os.environ.get(API_KEY_ENV, "").strip() or None
        if api_key is None and self.settings.hosted:
            raise FatalProviderError(
                f"{API_KEY_ENV} is not set: the hosted NV-CLIP API at {self.settings.url} "
                f"needs an API key (export {API_KEY_ENV}=nvapi-...); a self-hosted NIM does not")
        return api_key

    def setup(self) -> None:
        if self._client is not None:
            return
        api_key = self._api_key()
        s = self.settings
        limiter = shared_rate_limiter(s.url, s.requests_per_minute)
        self._redact = Redactor(api_key)
        self._client = NVClipClient(s, api_key, limiter, self._counters, s.dimension,
                                    s.concurrency)
        self._pool = cf.ThreadPoolExecutor(max_workers=s.concurrency,
                                           thread_name_prefix="nvclip")

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._client is not None:
            self._client.close()
        self._pool = None
        self._client = None

    @property
    def client(self) -> NVClipClient:
        if self._client is None:
            self.setup()
        assert self._client is not None
        return self._client

    def probe_ready(self) -> Tuple[Optional[int], str]:
        """GET ``{url}/health/ready`` → (HTTP status or None if unreachable, reason)."""
        return self.client.get_status("health/ready")

    # -- embedding --------------------------------------------------------------------------
    def embed_images(self, images: Sequence[EncodedImage]) -> List[EmbeddingResult]:
        return self.submit_images(images).result()

    def submit_images(self, images: Sequence[EncodedImage]) -> "cf.Future[List[EmbeddingResult]]":
        """Like ``embed_images`` but returns at once; the Future raises FatalProviderError."""
        inputs, prefailed = [], {}
        for position, image in enumerate(images):
            url, failure = image_data_url(image, self.settings.max_base64_chars)
            if failure is not None:
                prefailed[position] = failure
            else:
                inputs.append((position, url))
        return self._submit(len(images), inputs, prefailed, "images_embedded")

    def embed_texts(self, texts: Sequence[str]) -> List[EmbeddingResult]:
        inputs, prefailed = [], {}
        for position, text in enumerate(texts):
            text = (text or "").strip()
            if not text:
                prefailed[position] = EmbeddingResult.failure("EmptyText", "the text is empty")
                continue
            cut, truncated = truncate_for_clip(text, self.settings.max_text_tokens)
            if truncated:
                self._counters.add("texts_truncated")
                logger.warning("text %d truncated from %d to %d characters to fit CLIP's "
                               "%d-token context", position, len(text), len(cut),
                               self.settings.max_text_tokens)
            inputs.append((position, cut))
        return self._submit(len(texts), inputs, prefailed, "texts_embedded").result()

    def _submit(self, total: int, inputs: List[Tuple[int, str]],
                prefailed: Dict[int, EmbeddingResult], success_counter: str
                ) -> "cf.Future[List[EmbeddingResult]]":
        """Split ``inputs`` into even requests, run them on the pool, gather in input order."""
        if self._client is None:
            self.setup()
        assert self._pool is not None
        combined: "cf.Future[List[EmbeddingResult]]" = cf.Future()
        results: Dict[int, EmbeddingResult] = dict(prefailed)
        chunks = _even_chunks(inputs, self.settings.request_size)
        pending = [len(chunks)]
        lock = threading.Lock()

        def finish() -> None:
            ordered = [results[i] for i in range(total)]
            ok = sum(1 for r in ordered if r.ok)
            self._counters.add(success_counter, ok)
            self._counters.add("failures", total - ok)
            combined.set_result(ordered)

        def on_done(future: cf.Future) -> None:
            exc = future.exception()
            with lock:
                if combined.done():
                    return
                if exc is not None:
                    combined.set_exception(exc)
                    return
                results.update(future.result())
                pending[0] -= 1
                if pending[0] == 0:
                    finish()

        if not chunks:
            finish()
            return combined
        for chunk in chunks:
            self._pool.submit(self._embed_request, chunk).add_done_callback(on_done)
        return combined

    def _embed_request(self, items: List[Tuple[int, str]]) -> Dict[int, EmbeddingResult]:
        """One top-level request (runs on a pool thread), with the all-rejected guard."""
        results = self._embed_bisecting(items)
        if len(items) >= 2 and self.settings.max_rejected_batches > 0:
            rejected = [r for r in results.values() if r.error_type == REJECTED]
            with self._state_lock:
                if len(rejected) == len(items):
                    self._rejected_run += 1
                    if self._rejected_run >= self.settings.max_rejected_batches:
                        raise FatalProviderError(
                            f"NV-CLIP refused every input of {self._rejected_run} requests in a "
                            f"row ({rejected[0].error_message}); check --nvclip-model "
                            f"({self.settings.model!r}) and --nvclip-url")
                elif any(r.ok for r in results.values()):
                    self._rejected_run = 0
        return results

    def _embed_bisecting(self, items: List[Tuple[int, str]]) -> Dict[int, EmbeddingResult]:
        positions = [position for position, _ in items]
        try:
            found = self.client.embed([value for _, value in items])
            return dict(zip(positions, found))
        except RejectedRequest as rejected:
            if rejected.bisectable and len(items) > 1:
                self._counters.add("bisections")
                middle = len(items) // 2
                out = self._embed_bisecting(items[:middle])
                out.update(self._embed_bisecting(items[middle:]))
                return out
            failure = EmbeddingResult.failure(REJECTED, rejected.message, retryable=False)
            return {position: failure for position in positions}
        except RetriesExhausted as exhausted:
            failure = EmbeddingResult.failure(exhausted.error_type, exhausted.message,
                                              retryable=True, attempts=exhausted.attempts)
            return {position: failure for position in positions}
        except FatalProviderError:
            raise
        except Exception as exc:  # a client bug must not lose the images: dead-letter them
            message = self._redact(f"unexpected NV-CLIP client error: {type(exc).__name__}: "
                                   f"{exc}")
            logger.error("%s", message)
            failure = EmbeddingResult.failure("NVClipClientError", message, retryable=True)
            return {position: failure for position in positions}

    def stats(self) -> Dict[str, float]:
        """Additive counters only (safe to sum across workers): requests, retries,
        rate_limited (429s), timeouts, connection_errors, bisections, images_embedded,
        texts_embedded, texts_truncated, failures."""
        counters = self._counters.snapshot()
        return {key: float(counters.get(key, 0)) for key in (
            "requests", "retries", "rate_limited", "timeouts", "connection_errors", "bisections",
            "images_embedded", "texts_embedded", "texts_truncated", "failures")}

    def cost_line(self, stats: Optional[Mapping[str, float]] = None) -> str:
        """``cost_line`` for summed stats (default: this instance's) at this price setting."""
        return cost_line(self.stats() if stats is None else stats,
                         self.settings.cost_per_1k_images)


def _even_chunks(items: List[Any], limit: int) -> List[List[Any]]:
    """Split into ceil(n / limit) chunks of near-equal size (100 → 50 + 50, not 64 + 36)."""
    if not items:
        return []
    count = math.ceil(len(items) / limit)
    size, extra = divmod(len(items), count)
    chunks, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks
