"""Embedding providers behind one interface (``EmbeddingProvider``), chosen by name."""
from dicomvec.io.providers.base import (EmbeddingProvider, EmbeddingResult, EncodedImage,
                                        FatalProviderError, ProviderConfig,
                                        TextNotSupportedError)
from dicomvec.io.providers.registry import available_providers, create_provider

__all__ = ["EmbeddingProvider", "EmbeddingResult", "EncodedImage", "FatalProviderError",
           "ProviderConfig", "TextNotSupportedError", "available_providers", "create_provider"]
