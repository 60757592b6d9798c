"""The provider interface: a batch of encoded images (or texts) in, one result per input out.

A provider never raises for a bad input: each input gets an ``EmbeddingResult`` holding either a
unit-length float32 vector or an error (type, message, retryable, attempts). It raises
``FatalProviderError`` only when going on would be pointless for every image (bad key, no
credits): the job stops with that plain message.
"""
from __future__ import annotations

import abc
import concurrent.futures as cf
import dataclasses
import hashlib
from typing import Any, ClassVar, Dict, List, Optional, Sequence

import numpy as np

from dicomvec.defaults import PROVIDER_KEY_LENGTH


class FatalProviderError(RuntimeError):
    """Stop the job: no image can succeed (e.g. 401 bad key, 402 no credits)."""


class TextNotSupportedError(ValueError):
    """The provider has no text tower (e.g. the non-semantic thumbnail descriptor)."""


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    """An image as sent to a model: encoded bytes and their MIME type."""

    data: bytes
    mime: str = "image/png"


@dataclasses.dataclass(frozen=True)
class EmbeddingResult:
    """Exactly one of ``vector`` or ``error_type`` is set."""

    vector: Optional[np.ndarray] = None
    error_type: str = ""
    error_message: str = ""
    retryable: bool = False
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.vector is not None

    @classmethod
    def success(cls, vector: np.ndarray, attempts: int = 1) -> "EmbeddingResult":
        return cls(vector=vector, attempts=attempts)

    @classmethod
    def failure(cls, error_type: str, message: str, retryable: bool = False,
                attempts: int = 1) -> "EmbeddingResult":
        return cls(error_type=error_type, error_message=message, retryable=retryable,
                   attempts=attempts)


@dataclasses.dataclass(frozen=True)
class ProviderConfig:
    """Provider settings taken from pipeline options (never the API key: that is read from the
    environment inside the worker). ``target``: the provider's class as ``module:Class``, as
    the launching process's registry resolved ``name`` ("": look ``name`` up where it is
    built), so a worker process builds the class registered in the driver
    (``register_provider``) as long as it can import its module."""

    name: str
    settings: Dict[str, Any] = dataclasses.field(default_factory=dict)
    target: str = ""


def unit_vector(values: Sequence[float] | np.ndarray, dimension: int) -> np.ndarray:
    """Validate and L2-normalise one vector: right length, finite, non-zero. Raises ValueError."""
    vec = np.asarray(values, dtype=np.float64).reshape(-1)
    if vec.shape[0] != dimension:
        raise ValueError(f"vector has {vec.shape[0]} dimensions, expected {dimension}")
    if not np.all(np.isfinite(vec)):
        raise ValueError("vector has non-finite values")
    norm = float(np.linalg.norm(vec))
    if norm < 1e-12:
        raise ValueError("vector is all zeros")
    return (vec / norm).astype(np.float32)


class EmbeddingProvider(abc.ABC):
    """Turns batches of images (and, for semantic models, texts) into vectors.

    Lifecycle follows a DoFn's: ``setup()`` once per worker instance, ``teardown()`` at the end.
    """

    #: registry name (``--provider``, counters, messages); see ``store_key`` for the rows
    name: ClassVar[str] = ""
    #: False for descriptors with no meaning (no text search, not CLIP)
    semantic: ClassVar[bool] = True
    #: largest batch one call may take
    max_batch_size: ClassVar[int] = 64
    #: the model input the provider wants from the pipeline instead of ``--image-format``
    #: (``"raw-gray"``: the fitted uint8 gray pixels, no PNG round trip); None: the flag's
    input_format: ClassVar[Optional[str]] = None

    def __init__(self, config: ProviderConfig):
        self.config = config

    @property
    @abc.abstractmethod
    def model(self) -> str:
        """Stored in the EmbeddingModel column."""

    @property
    @abc.abstractmethod
    def dimension(self) -> int:
        """Vector length."""

    @property
    def store_key(self) -> str:
        """What this provider's rows carry in the Provider column, and the value every
        provider filter compares with (resume, search, counts, check-db, reprocess,
        ``--replace-invalid``, serve): vectors of two models never mix, even in one table of
        their length. Default: ``name``; a provider that runs several models returns one key
        per model (``store_key_for(name, model id)``), at most ``PROVIDER_KEY_LENGTH``
        characters."""
        return self.name

    @property
    def destination(self) -> str:
        """Where what this provider embeds (image pixels, report texts) is sent, in words for
        the run summary and ``--help``: ``nowhere: ...`` for a provider computing on the worker
        itself."""
        return "nowhere: computed on this machine"

    @property
    def third_party(self) -> bool:
        """True when inputs leave the user's machines for a service someone else runs (a hosted
        API): the commands then print ``privacy.third_party_notice`` before they start."""
        return False

    @property
    def input_size(self) -> Optional[int]:
        """The model's own input side in pixels (the default of ``--image-size``); None: any."""
        return None

    def preflight(self) -> None:
        """Before a job starts, in the launching process: raise ``FatalProviderError`` when no
        call can succeed (e.g. missing credentials). Sends nothing, creates nothing."""

    def setup(self) -> None:
        """Open connections; called once per DoFn instance."""

    def teardown(self) -> None:
        """Close connections."""

    @abc.abstractmethod
    def embed_images(self, images: Sequence[EncodedImage]) -> List[EmbeddingResult]:
        """One result per image, in input order."""

    def submit_images(self, images: Sequence[EncodedImage]) -> cf.Future:
        """``embed_images`` as a Future (a provider that overlaps requests returns at once)."""
        return finished_future(lambda: self.embed_images(images))

    def embed_texts(self, texts: Sequence[str]) -> List[EmbeddingResult]:
        """One result per text, in input order."""
        raise TextNotSupportedError(
            f"the {self.name!r} provider has no text embedding; use a semantic provider "
            "such as openclip (a local model) or nvclip for text queries")

    def stats(self) -> Dict[str, float]:
        """Counters for the end-of-run summary (requests, retries, ...)."""
        return {}

    def cost_line(self, stats: Dict[str, float]) -> str:
        """The summary's line on what the run cost, from summed ``stats`` ('': none)."""
        return ""


def store_key_for(name: str, model_id: str) -> str:
    """``name:model_id`` when it fits the Provider column (``PROVIDER_KEY_LENGTH``), else its
    head and a digest of the whole (``name:…head~<12 hex>``): the same model always gets the
    same key, two models never share one."""
    key = f"{name}:{model_id}"
    if len(key) <= PROVIDER_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    return key[:PROVIDER_KEY_LENGTH - len(digest) - 1] + "~" + digest


def finished_future(call) -> cf.Future:
    """A finished Future holding ``call()``'s result or its exception (fatal errors raise)."""
    future: cf.Future = cf.Future()
    try:
        future.set_result(call())
    except FatalProviderError:
        raise
    except Exception as exc:  # reported per input by the caller
        future.set_exception(exc)
    return future
