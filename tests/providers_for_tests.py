"""Test-only embedding providers of 512-d vectors: two "models" that share one vector length.

``projection-a`` and ``projection-b`` are one class, ``ProjectionProvider``, told apart by their
model id (the last letter of the name): each projects the ``thumbnail`` descriptor (1024-d) onto
512 dimensions with its own seeded random matrix, and embeds a text as a seeded random vector
of its SHA-256, so every vector is deterministic and recomputable in a test. Their rows carry
``store_key`` ``projection:a`` / ``projection:b`` (not their registry names), as a provider
that runs several models does (``openclip:<model>``).

``register()`` adds them to the registry of this process; the job's ``ProviderConfig`` carries
``tests.providers_for_tests:ProjectionProvider``, so worker processes (the local engine's
``--direct_num_workers 2``) import this module and build the same class.
"""
from __future__ import annotations

import hashlib
from typing import List, Sequence

import numpy as np

from dicomvec.io.providers.base import (EmbeddingProvider, EmbeddingResult, EncodedImage,
                                        store_key_for, unit_vector)
from dicomvec.io.providers.registry import register_provider
from dicomvec.io.providers.thumbnail import ThumbnailProvider

DIMENSION = 512
NAMES = ("projection-a", "projection-b")


def register() -> None:
    for name in NAMES:
        register_provider(name, f"{__name__}:ProjectionProvider")


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


class ProjectionProvider(EmbeddingProvider):
    """A seeded random projection of the thumbnail descriptor (see the module docstring)."""

    name = "projection"
    semantic = True  # it has a "text tower": reports get vectors, text queries run
    max_batch_size = 256

    def __init__(self, config):
        super().__init__(config)
        self.model_id = config.name.rsplit("-", 1)[-1]
        self.name = config.name  # the registry name it was built under
        self.matrix = np.random.default_rng(_seed(self.model)).standard_normal(
            (DIMENSION, 1024))
        self.thumbnail = ThumbnailProvider(config)

    @property
    def model(self) -> str:
        return f"test-projection-512-{self.model_id}"

    @property
    def dimension(self) -> int:
        return DIMENSION

    @property
    def store_key(self) -> str:
        return store_key_for("projection", self.model_id)

    def project(self, descriptor: np.ndarray) -> np.ndarray:
        return unit_vector(self.matrix @ descriptor.astype(np.float64), DIMENSION)

    def embed_images(self, images: Sequence[EncodedImage]) -> List[EmbeddingResult]:
        results = []
        for image in images:
            try:
                results.append(EmbeddingResult.success(
                    self.project(self.thumbnail.describe(image))))
            except Exception as exc:  # one bad image never fails its neighbours
                results.append(EmbeddingResult.failure(type(exc).__name__, str(exc)))
        return results

    def embed_texts(self, texts: Sequence[str]) -> List[EmbeddingResult]:
        return [EmbeddingResult.success(unit_vector(
            np.random.default_rng(_seed(f"{self.model}|{text}")).standard_normal(DIMENSION),
            DIMENSION)) for text in texts]
