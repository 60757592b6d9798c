"""Find, describe and load an open_clip image–text model given as ``--openclip-model``.

In: a model spec — a folder in the layout open_clip models are published in on the hub
(``open_clip_config.json`` + ``open_clip_pytorch_model.bin`` or ``.safetensors``, the tokenizer's
files where the model has its own, and for a HuggingFace text tower such as BiomedCLIP's its
``config.json``), a plain OpenAI-CLIP checkpoint file (a state dict ``.pt``, as CheXzero
publishes), or ``hf-hub:NAME`` (resolved through the usual HuggingFace cache; offline with
``HF_HUB_OFFLINE=1``). Out: ``describe(spec)`` → ``ModelInfo`` (embedding dimension, input size:
cheap, no weights read) and ``load(spec, device)`` → ``LoadedModel`` (the model in eval mode on
the device, open_clip's own validation transform, the tokenizer).

Every way a spec cannot be used (missing path, nothing cached and no network, corrupt or
mismatched weights, ``--device cuda`` without CUDA, the extra not installed) raises
``ModelUnavailable``, whose message is one line naming the model and how to pass a local path.
torch and open_clip are imported inside the functions, so importing this module costs nothing.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from dicomvec.errors import PreflightError

HUB_PREFIX = "hf-hub:"
CONFIG_FILE = "open_clip_config.json"
#: weight files open_clip looks for in a model folder, in its order of preference
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
                "model.safetensors", "pytorch_model.bin")
HOW_TO_PASS = ("pass a local copy: --openclip-model /path/to/folder (open_clip_config.json + "
               "open_clip_pytorch_model.bin or .safetensors) or /path/to/checkpoint.pt")
DEVICES = ("auto", "cpu", "cuda")


class ModelUnavailable(PreflightError):
    """The model cannot be found, read or built here: one line for the user, exit 2."""


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a spec's files are: ``kind`` "folder" (open_clip layout) or "checkpoint" (an
    OpenAI-CLIP state dict); ``path`` the local folder or file; ``spec`` as the user gave it."""

    spec: str
    kind: str
    path: str

    @functools.cached_property
    def short_id(self) -> str:
        """A short, stable name that two different models never share: the hub name (one repo,
        one model), else the folder's or file's name and the first 8 hex digits of the weights'
        SHA-256 (``biomedclip@1a2b3c4d``): two folders of the same name holding different
        weights get different ids, the same weights copied elsewhere the same one. Worked out
        once per source: the provider asks for it with every embedded record."""
        if self.spec.startswith(HUB_PREFIX):
            return self.spec[len(HUB_PREFIX):]
        path = Path(self.path)
        if self.kind == "checkpoint":
            return f"{path.stem}@{weights_digest(path)}"
        return f"{path.name}@{weights_digest(_weights_in(path))}"  # resolve: it has weights


def weights_digest(path: Path) -> str:
    """The first 8 hex digits of ``path``'s SHA-256, computed once per process for a file's
    size and modification time (one more read of the weights per worker process, beside the
    load)."""
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()[:8]
    return _DIGESTS[key]


_DIGESTS: Dict[Tuple[str, int, int], str] = {}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the pipeline must know before a job starts (read without loading weights)."""

    source: ModelSource
    dimension: int
    image_size: int


@dataclasses.dataclass
class LoadedModel:
    """A model ready to embed: ``preprocess`` (PIL image → CHW float tensor, the model's own
    validation transform), ``tokenizer`` (list of texts → token tensor), the torch ``device``."""

    info: ModelInfo
    model: Any
    preprocess: Callable
    tokenizer: Callable
    device: str


def _unavailable(spec: str, why: str) -> ModelUnavailable:
    return ModelUnavailable(f"--openclip-model {spec}: {why}; {HOW_TO_PASS}")


def resolve(spec: Optional[str]) -> ModelSource:
    """The local files of ``spec`` (a hub name is looked up in, or fetched into, the HF cache).
    Raises ModelUnavailable."""
    if not spec:
        raise ModelUnavailable("--provider openclip needs --openclip-model PATH|hf-hub:NAME; "
                               + HOW_TO_PASS)
    if spec.startswith(HUB_PREFIX):
        return _resolve_hub(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise _unavailable(spec, f"the folder has no {CONFIG_FILE}")
        if _weights_in(path) is None:
            wanted = " or ".join(WEIGHT_FILES[1:3])
            raise _unavailable(spec, f"the folder has no weights ({wanted})")
        return ModelSource(spec, "folder", str(path.resolve()))
    if path.is_file():
        return ModelSource(spec, "checkpoint", str(path.resolve()))
    raise _unavailable(spec, "no such file or folder")


def _weights_in(folder: Path) -> Optional[Path]:
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def _resolve_hub(spec: str) -> ModelSource:
    name = spec[len(HUB_PREFIX):]
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise _unavailable(spec, "huggingface_hub is not installed (pip install "
                                 "'dicomvec[openclip]')") from None
    try:
        config = hf_hub_download(name, CONFIG_FILE)
    except Exception as exc:  # offline and not cached, unknown repo, no network
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        why = ("not in the HuggingFace cache and HF_HUB_OFFLINE is set" if offline else
               f"cannot fetch it from the HuggingFace hub nor find it in the cache "
               f"({type(exc).__name__})")
        raise _unavailable(spec, why) from None
    folder = Path(config).parent
    if _weights_in(folder) is None:
        for weights in WEIGHT_FILES[:4]:
            try:
                hf_hub_download(name, weights)
                break
            except Exception:  # noqa: BLE001 - try the next name; none: reported below
                continue
    if _weights_in(folder) is None:
        raise _unavailable(spec, "its weights are not in the HuggingFace cache and cannot be "
                                 "fetched")
    for extra in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                  "special_tokens_map.json", "config.json"):
        try:  # the model's own tokenizer / text-tower files, where it has them
            hf_hub_download(name, extra)
        except Exception:  # noqa: BLE001 - optional files
            pass
    return ModelSource(spec, "folder", str(folder))


def _read_config(source: ModelSource) -> Dict[str, Any]:
    try:
        with open(Path(source.path) / CONFIG_FILE, encoding="utf-8") as handle:
            config = json.load(handle)
        return config["model_cfg"] if "model_cfg" in config else config
    except (OSError, ValueError, KeyError) as exc:
        raise _unavailable(source.spec, f"unreadable {CONFIG_FILE} ({type(exc).__name__}: "
                                        f"{exc})") from None


def _size(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def describe(spec: Optional[str]) -> ModelInfo:
    """``_describe`` remembered per spec and file times (the driver asks several times)."""
    source = resolve(spec)
    read = Path(source.path) / CONFIG_FILE if source.kind == "folder" else Path(source.path)
    stamp = os.stat(read).st_mtime_ns
    key = (spec, source.path, stamp)
    if key not in _DESCRIBED:
        _DESCRIBED[key] = _describe(source)
    return _DESCRIBED[key]


_DESCRIBED: Dict[Tuple[str, str, int], ModelInfo] = {}


def _describe(source: ModelSource) -> ModelInfo:
    """Dimension and input size of ``spec`` without building the model: from the folder's
    config (``embed_dim``, ``vision_cfg.image_size``) or from the checkpoint's tensor shapes
    (``text_projection``, the patch size × the positional grid). Raises ModelUnavailable."""
    if source.kind == "folder":
        config = _read_config(source)
        try:
            return ModelInfo(source, int(config["embed_dim"]),
                             _size(config.get("vision_cfg", {}).get("image_size", 224)))
        except (KeyError, TypeError, ValueError):
            raise _unavailable(source.spec, f"{CONFIG_FILE} has no model_cfg.embed_dim") from None
    state = _openai_state_dict(source)
    return ModelInfo(source, int(state["text_projection"].shape[1]), _openai_image_size(state))


def _torch():
    try:
        import open_clip  # noqa: F401
        import torch
    except ImportError as exc:
        raise ModelUnavailable(f"--provider openclip needs the openclip extra: pip install "
                               f"'dicomvec[openclip]' ({exc})") from None
    return torch


def _openai_state_dict(source: ModelSource) -> Dict[str, Any]:
    """The checkpoint's state dict (memory-mapped where torch can). Raises ModelUnavailable."""
    torch = _torch()
    from open_clip.factory import load_state_dict
    try:
        state = load_state_dict(source.path, device="cpu")
    except Exception as exc:  # truncated, not a torch file, a pickle of something else
        raise _unavailable(source.spec, f"cannot read the weights ({type(exc).__name__}: "
                                        f"{_first(exc)})") from None
    required = ("text_projection", "visual.conv1.weight", "visual.positional_embedding",
                "positional_embedding", "token_embedding.weight")
    if not isinstance(state, dict) or any(key not in state for key in required):
        raise _unavailable(source.spec, "not an OpenAI-CLIP (ViT) state dict: a checkpoint "
                                        "file needs text_projection and visual.conv1.weight")
    if not all(isinstance(state[key], torch.Tensor) for key in required):
        raise _unavailable(source.spec, "the checkpoint's weights are not tensors")
    return state


def _openai_image_size(state: Dict[str, Any]) -> int:
    patch = int(state["visual.conv1.weight"].shape[-1])
    grid = round((int(state["visual.positional_embedding"].shape[0]) - 1) ** 0.5)
    return patch * grid


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one raises
    ModelUnavailable."""
    if device not in DEVICES:
        raise ModelUnavailable(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
    torch = _torch()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("--device cuda: torch sees no CUDA device here (use --device "
                               "cpu or auto)")
    return device


def load(spec: str, device: str = "auto") -> LoadedModel:
    """Build the model with open_clip's own code and load its weights, in eval mode on the
    (resolved) device, with its validation transform and tokenizer. Raises ModelUnavailable."""
    info = describe(spec)
    device = resolve_device(device)
    try:
        if info.source.kind == "folder":
            model, preprocess, tokenizer = _load_folder(info.source, device)
        else:
            model, preprocess, tokenizer = _load_openai(info.source, device)
    except ModelUnavailable:
        raise
    except Exception as exc:  # corrupt or mismatched weights, a missing text-tower config
        raise _unavailable(info.source.spec, f"cannot load the model ({type(exc).__name__}: "
                                             f"{_first(exc)})") from None
    model.eval()
    return LoadedModel(info, model, preprocess, tokenizer, device)


def _load_folder(source: ModelSource, device: str) -> Tuple[Any, Callable, Callable]:
    """An open_clip folder through ``local-dir:``; a HuggingFace text tower is built from the
    folder's own ``config.json`` when it has one (else the tower's name, from the HF cache)."""
    import open_clip
    folder = Path(source.path)
    kwargs: Dict[str, Any] = {}
    text_cfg = dict(_read_config(source).get("text_cfg", {}))
    if "hf_model_name" in text_cfg and (folder / "config.json").is_file():
        kwargs["text_cfg"] = dict(text_cfg, hf_model_name=str(folder), hf_model_pretrained=False)
    elif "hf_model_name" in text_cfg:
        _require_hf_config(source.spec, text_cfg["hf_model_name"])
    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{folder}", device=device, precision="fp32", **kwargs)
    if _has_tokenizer_files(folder) or "hf_tokenizer_name" not in text_cfg:
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    else:  # the config names a hub tokenizer and the folder has none: the HF cache's
        tokenizer = open_clip.tokenizer.HFTokenizer(
            text_cfg["hf_tokenizer_name"],
            context_length=text_cfg.get("context_length",
                                        open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH),
            **text_cfg.get("tokenizer_kwargs", {}))
    return model, preprocess, tokenizer


def _require_hf_config(spec: str, name: str) -> None:
    """The HuggingFace text tower's config (e.g. BiomedCLIP's PubMedBERT), from the cache or
    the hub; ModelUnavailable saying where to put it when neither has it."""
    from transformers import AutoConfig
    try:
        AutoConfig.from_pretrained(name)
    except Exception:  # offline and not cached, no network
        raise _unavailable(spec, f"its text tower's config ({name}/config.json) is neither in "
                                 f"the folder nor in the HuggingFace cache: copy that "
                                 f"config.json into the folder") from None


def _has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in
               ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model"))


def _load_openai(source: ModelSource, device: str) -> Tuple[Any, Callable, Callable]:
    """A plain OpenAI-CLIP state dict: open_clip builds the architecture from its shapes."""
    import open_clip
    from open_clip.model import build_model_from_openai_state_dict
    state = _openai_state_dict(source)
    model = build_model_from_openai_state_dict(dict(state), cast_dtype=None)
    model = model.float().to(device)
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False,
                                           mean=open_clip.OPENAI_DATASET_MEAN,
                                           std=open_clip.OPENAI_DATASET_STD)
    tokenizer = open_clip.SimpleTokenizer(context_length=int(
        state["positional_embedding"].shape[0]))
    return model, preprocess, tokenizer


def device_batch_size(device: str, cpu: int, cuda: int) -> int:
    """Images per forward pass: small on a CPU (latency, memory), large on a GPU."""
    return cuda if device == "cuda" else cpu


__all__: List[str] = ["ModelUnavailable", "ModelSource", "ModelInfo", "LoadedModel", "resolve",
                      "describe", "load", "resolve_device", "device_batch_size", "DEVICES"]
