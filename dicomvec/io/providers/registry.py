"""Provider lookup by name: ``create_provider(ProviderConfig("thumbnail"))``."""
from __future__ import annotations

import importlib
from typing import Dict, List

from dicomvec.io.providers.base import EmbeddingProvider, ProviderConfig

# name -> "module:Class"; imported lazily so optional dependencies stay optional.
_PROVIDERS: Dict[str, str] = {
    "thumbnail": "dicomvec.io.providers.thumbnail:ThumbnailProvider",
    "nvclip": "dicomvec.io.providers.nvclip:NVClipProvider",
    "openclip": "dicomvec.io.providers.openclip:OpenClipProvider",
}


def register_provider(name: str, target: str) -> None:
    """Make ``--provider name`` build ``target`` ("module:Class"); worker processes build it
    too (``ProviderConfig.target``) when they can import the module."""
    _PROVIDERS[name] = target


def provider_target(name: str) -> str:
    """``name``'s "module:Class" in this process's registry ("" when unknown)."""
    return _PROVIDERS.get(name, "")


def available_providers() -> List[str]:
    return sorted(_PROVIDERS)


def provider_class(name: str, target: str = "") -> type:
    """The class of provider ``name`` (``target``: "module:Class" resolved elsewhere)."""
    if not target:
        try:
            target = _PROVIDERS[name]
        except KeyError:
            raise ValueError(f"unknown provider {name!r}; choose one of "
                             f"{available_providers()}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_provider(config: ProviderConfig) -> EmbeddingProvider:
    return provider_class(config.name, config.target)(config)
