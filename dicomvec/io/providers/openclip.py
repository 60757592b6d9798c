"""``openclip``: a local image–text model (BiomedCLIP, any open_clip model, an OpenAI-CLIP
checkpoint such as CheXzero's) run by PyTorch in the worker process. No pixel leaves the machine.

Two pieces, on Beam's RunInference API (``apache_beam.ml.inference.base``):

* ``OpenClipModelHandler`` — a ``ModelHandler``: ``load_model()`` builds the model
  (``openclip_loading.load``), ``run_inference(batch, model)`` takes preprocessed CHW float32
  arrays and yields one ``PredictionResult`` per element (``inference``: its unit-length
  float32 vector); ``batch_elements_kwargs`` suits
  the device (CPU: ``OPENCLIP_CPU_BATCH``, CUDA: ``OPENCLIP_CUDA_BATCH``). It runs as is under
  Beam's own ``RunInference`` transform.
* ``OpenClipProvider`` — the ``EmbeddingProvider`` the one embed transform (``EmbedBatch``) calls.
  It holds the model through a module-level ``apache_beam.utils.shared.Shared`` per (model,
  device), as RunInference does: one model per worker process, shared by its DoFn threads. It
  asks the pipeline for raw grayscale (``input_format = "raw-gray"``: the normalized uint8 array
  fitted to the model's input size, no PNG round trip) and applies the model's own validation
  transform (gray → RGB → resize/crop, mean/std). Each image is decoded and preprocessed on its
  own (a bad one gets its own failure); a forward pass that fails is retried one image at a
  time, so one bad image never fails its batch.

Settings (``ProviderConfig.settings``): ``model`` (``--openclip-model PATH|hf-hub:NAME``),
``device`` (``--device auto|cpu|cuda``), ``batch_size`` (images per forward pass; 0: by device).
The dimension and input size come from the model (``openclip_loading.describe``); ``preflight``
loads the model once in the launching process, so a missing path, an uncached hub name offline
or corrupt weights is one line and exit status 2 before anything is created.
"""
from __future__ import annotations

import dataclasses
import io
import threading
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.utils import shared

from dicomvec import defaults
from dicomvec.imaging.encoding import RAW_GRAY, decode_raw_gray, is_raw_gray
from dicomvec.io.providers import openclip_loading as loading
from dicomvec.io.providers.base import (EmbeddingProvider, EmbeddingResult, EncodedImage,
                                        FatalProviderError, ProviderConfig, store_key_for,
                                        unit_vector)

METRICS_NAMESPACE = "dicomvec_openclip"


@dataclasses.dataclass(frozen=True)
class OpenClipSettings:
    """Typed view of ``ProviderConfig.settings`` (see the module docstring)."""

    model: Optional[str] = None
    device: str = defaults.OPENCLIP_DEVICE
    batch_size: int = 0

    @classmethod
    def from_mapping(cls, settings: Optional[Mapping[str, Any]]) -> "OpenClipSettings":
        """Unknown keys are an error (a typo must not silently fall back to a default)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings or {}) - known)
        if unknown:
            raise ValueError(f"unknown openclip setting(s) {unknown}; known: {sorted(known)}")
        values = {k: v for k, v in (settings or {}).items() if v is not None}
        if "batch_size" in values:
            values["batch_size"] = int(values["batch_size"])
        made = cls(**values)
        if made.device not in loading.DEVICES:
            raise ValueError(f"--device {made.device!r}: choose one of "
                             f"{', '.join(loading.DEVICES)}")
        if made.batch_size < 0:
            raise ValueError("openclip batch_size must be 0 (by device) or more")
        return made


class OpenClipModelHandler(ModelHandler[np.ndarray, PredictionResult, "loading.LoadedModel"]):
    """RunInference's view of the model: preprocessed images (CHW float32 arrays, the model's
    own transform applied) in, one ``PredictionResult(example, vector)`` each out, ``vector``
    unit-length float32."""

    def __init__(self, model: str, device: str = defaults.OPENCLIP_DEVICE, batch_size: int = 0):
        self.model_spec = model
        self.device = device
        self.batch_size = batch_size
        super().__init__(min_batch_size=1, max_batch_size=None)

    def resolved_device(self) -> str:
        return loading.resolve_device(self.device)

    def inference_batch_size(self) -> int:
        """Images per forward pass: the setting, else by device (CPU small, CUDA large)."""
        return self.batch_size or loading.device_batch_size(
            self.resolved_device(), defaults.OPENCLIP_CPU_BATCH, defaults.OPENCLIP_CUDA_BATCH)

    def load_model(self) -> "loading.LoadedModel":
        return loading.load(self.model_spec, self.device)

    def run_inference(self, batch: Sequence[np.ndarray], model: "loading.LoadedModel",
                      inference_args: Optional[Dict[str, Any]] = None
                      ) -> Iterable[PredictionResult]:
        """One forward pass over ``batch`` → (example, L2-normalised float32 vector), in
        order."""
        import torch
        pixels = torch.from_numpy(np.stack([np.asarray(x, dtype=np.float32) for x in batch]))
        with torch.inference_mode():
            features = model.model.encode_image(pixels.to(model.device))
            features = torch.nn.functional.normalize(features.float(), dim=-1)
        vectors = features.cpu().numpy().astype(np.float32)
        return [PredictionResult(example, vector, self.model_spec)
                for example, vector in zip(batch, vectors)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(np.asarray(x).nbytes for x in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self.inference_batch_size()}

    def share_model_across_processes(self) -> bool:
        return False  # one model per worker process, shared by its threads (Shared)


#: (model spec, device) → the Shared that holds that model in this process
_SHARED: Dict[Tuple[str, str], shared.Shared] = {}
_SHARED_LOCK = threading.Lock()


def shared_model(handler: OpenClipModelHandler) -> "loading.LoadedModel":
    """The handler's model, loaded once per process (and kept alive between DoFn instances)."""
    key = (handler.model_spec, handler.device)
    with _SHARED_LOCK:
        holder = _SHARED.setdefault(key, shared.Shared())
    return holder.acquire(handler.load_model, tag=key)


def pil_rgb(image: EncodedImage):
    """The model input as a PIL RGB image: raw grayscale (``image/x-dicomvec-gray8``) or any
    PIL-readable bytes (PNG, JPEG). Raises ValueError for bytes that are neither."""
    from PIL import Image
    if is_raw_gray(image.mime):
        return Image.fromarray(decode_raw_gray(image.data, image.mime), "L").convert("RGB")
    if not image.data:
        raise ValueError("the encoded image has no bytes")
    try:
        with Image.open(io.BytesIO(image.data)) as opened:
            return opened.convert("RGB")
    except Exception as exc:  # PIL's UnidentifiedImageError, truncated files
        raise ValueError(f"not an image PIL can read ({type(exc).__name__})") from None


def preprocess(image: EncodedImage, loaded: "loading.LoadedModel") -> np.ndarray:
    """One model input (CHW float32) through the model's own validation transform."""
    tensor = loaded.preprocess(pil_rgb(image))
    return tensor.numpy().astype(np.float32, copy=False)


class OpenClipProvider(EmbeddingProvider):
    """A local open_clip model. See the module docstring."""

    name = "openclip"
    semantic = True
    max_batch_size = 256
    input_format = RAW_GRAY

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        self.settings = OpenClipSettings.from_mapping(config.settings)
        self.handler = OpenClipModelHandler(self.settings.model, self.settings.device,
                                            self.settings.batch_size)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._loaded: Optional[loading.LoadedModel] = None
        self._info: Optional[loading.ModelInfo] = None
        self._counts: Dict[str, int] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> Dict[str, Any]:  # never pickle a model
        return {"config": self.config, "settings": self.settings, "handler": self.handler}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return f"OpenClipProvider(model={self.settings.model!r}, device={self.settings.device!r})"

    # -- what the driver needs (no weights read) --------------------------------------------
    @property
    def info(self) -> "loading.ModelInfo":
        """Read once per provider instance: ``model`` and ``store_key`` are asked for every
        embedded record, and resolving a hub name may ask the hub."""
        if self._info is None:
            self._info = loading.describe(self.settings.model)
        return self._info

    @property
    def model(self) -> str:
        """EmbeddingModel column: the model's short id (hub name, or folder or file name @ weights
        digest)."""
        return self.info.source.short_id[:100]

    @property
    def store_key(self) -> str:
        """Provider column and every provider filter: one key per model
        (``openclip:<short id>``, shortened with a digest past the column's length)."""
        return store_key_for(self.name, self.info.source.short_id)

    @property
    def destination(self) -> str:
        return "nowhere: local model"

    @property
    def dimension(self) -> int:
        return self.info.dimension

    @property
    def input_size(self) -> Optional[int]:
        return self.info.image_size

    # -- lifecycle --------------------------------------------------------------------------
    def preflight(self) -> None:
        """Load the model here once, so that any problem (missing, corrupt, no CUDA) is one line
        before anything is created, then let it go: the launching process of a Flink job never
        runs the model, and must not hold a copy of it (~4 GB for a ViT-H/14) for the job's
        lifetime. Workers load their own (``setup``); an in-process run pays one more load."""
        import gc
        loaded = self.handler.load_model()
        del loaded
        gc.collect()

    def setup(self) -> None:
        if self._loaded is None:
            try:
                self._loaded = shared_model(self.handler)
            except loading.ModelUnavailable as exc:  # checked in preflight; gone since?
                raise FatalProviderError(str(exc)) from None

    def teardown(self) -> None:
        self._loaded = None  # the Shared keeps the model for the next DoFn instance

    @property
    def loaded(self) -> "loading.LoadedModel":
        if self._loaded is None:
            self.setup()
        assert self._loaded is not None
        return self._loaded

    # -- embedding --------------------------------------------------------------------------
    def embed_images(self, images: Sequence[EncodedImage]) -> List[EmbeddingResult]:
        loaded = self.loaded
        results: List[Optional[EmbeddingResult]] = [None] * len(images)
        inputs: List[Tuple[int, np.ndarray]] = []
        for position, image in enumerate(images):
            try:
                inputs.append((position, preprocess(image, loaded)))
            except Exception as exc:  # this image only
                results[position] = EmbeddingResult.failure(type(exc).__name__, str(exc))
        self._forward_in_batches(inputs, results, lambda chunk: self._infer(chunk, loaded))
        ok = sum(1 for r in results if r is not None and r.ok)
        self._count(images_embedded=ok, failures=len(images) - ok)
        return [r for r in results if r is not None]

    def _infer(self, chunk: List[Tuple[int, np.ndarray]], loaded
               ) -> List[Tuple[int, EmbeddingResult]]:
        """One image forward pass over ``chunk`` ((position, pixels) pairs)."""
        started = time.perf_counter()
        vectors = self.handler.run_inference([x for _, x in chunk], loaded)
        self._count(inference_batches=1,
                    inference_ms=round((time.perf_counter() - started) * 1000))
        return [(position, self._result(prediction.inference))
                for (position, _), prediction in zip(chunk, vectors)]

    def _result(self, vector: np.ndarray) -> EmbeddingResult:
        try:
            return EmbeddingResult.success(unit_vector(vector, self.loaded.info.dimension))
        except ValueError as exc:  # non-finite or zero output
            return EmbeddingResult.failure("InvalidVector", str(exc))

    def embed_texts(self, texts: Sequence[str]) -> List[EmbeddingResult]:
        """Texts through the model's own tokenizer (cut to its context) and text tower, in
        device-sized batches; a batch that fails is retried one text at a time."""
        results: List[Optional[EmbeddingResult]] = [None] * len(texts)
        inputs = []
        for position, text in enumerate(texts):
            text = (text or "").strip()
            if text:
                inputs.append((position, text))
            else:
                results[position] = EmbeddingResult.failure("EmptyText", "the text is empty")
        self._forward_in_batches(inputs, results, self._encode_texts)
        ok = sum(1 for r in results if r is not None and r.ok)
        self._count(texts_embedded=ok, failures=len(texts) - ok)
        return [r for r in results if r is not None]

    def _encode_texts(self, chunk: List[Tuple[int, str]]) -> List[Tuple[int, EmbeddingResult]]:
        """One text-tower pass over ``chunk`` ((position, text) pairs)."""
        import torch
        loaded = self.loaded
        tokens = loaded.tokenizer([text for _, text in chunk]).to(loaded.device)
        with torch.inference_mode():
            vectors = loaded.model.encode_text(tokens).float().cpu().numpy()
        return [(position, self._result(vector))
                for (position, _), vector in zip(chunk, vectors)]

    def _forward_in_batches(self, inputs: List[Tuple[int, Any]],
                            results: List[Optional[EmbeddingResult]], forward) -> None:
        """``forward`` over ``inputs`` ((position, input) pairs) in device-sized chunks, each
        result stored at its position; a chunk whose pass raises is run again one input at a
        time, so that only the input that fails gets the failure."""
        size = self.handler.inference_batch_size()
        for start in range(0, len(inputs), size):
            for position, result in self._each_alone_on_failure(inputs[start:start + size],
                                                                  forward):
                results[position] = result

    def _each_alone_on_failure(self, chunk, forward) -> List[Tuple[int, EmbeddingResult]]:
        try:
            return forward(chunk)
        except Exception as exc:  # noqa: BLE001 - reported per input, never lost
            if len(chunk) == 1:
                return [(chunk[0][0], EmbeddingResult.failure(type(exc).__name__, str(exc)))]
            return [pair for item in chunk
                    for pair in self._each_alone_on_failure([item], forward)]

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for key, value in deltas.items():
                self._counts[key] = self._counts.get(key, 0) + value

    def stats(self) -> Dict[str, float]:
        """Additive counters: images_embedded, texts_embedded, failures, inference_batches
        (image forward passes) and inference_ms (their wall time)."""
        with self._lock:
            return {key: float(self._counts.get(key, 0)) for key in (
                "images_embedded", "texts_embedded", "failures", "inference_batches",
                "inference_ms")}
