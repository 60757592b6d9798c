"""``thumbnail``: an offline, deterministic, NON-SEMANTIC image descriptor.

It is not CLIP and knows nothing of anatomy or findings. The vector is the image's 32×32
area-average thumbnail, mean-centred and L2-normalised (1024 values), so it supports dry runs
and near-duplicate image → image lookups only. Text queries are refused. Rows it writes carry
Provider ``thumbnail`` and EmbeddingModel ``dicomvec-thumbnail-32x32-nonsemantic``.
"""
from __future__ import annotations

import io
from typing import List, Sequence

import numpy as np
from PIL import Image

from dicomvec.io.providers.base import (EmbeddingProvider, EmbeddingResult, EncodedImage,
                                        unit_vector)

GRID = 32


class ThumbnailProvider(EmbeddingProvider):
    name = "thumbnail"
    semantic = False
    max_batch_size = 1024

    @property
    def model(self) -> str:
        return "dicomvec-thumbnail-32x32-nonsemantic"

    @property
    def dimension(self) -> int:
        return GRID * GRID

    @property
    def destination(self) -> str:
        return "nowhere: computed on this machine (thumbnail descriptor)"

    def describe(self, image: EncodedImage) -> np.ndarray:
        """Encoded image → 1024-d unit vector. Raises ValueError for a constant image."""
        with Image.open(io.BytesIO(image.data)) as im:
            small = im.convert("L").resize((GRID, GRID), Image.Resampling.BOX)
        values = np.asarray(small, dtype=np.float64).reshape(-1)
        values -= values.mean()
        if np.abs(values).max() < 1e-9:
            raise ValueError("image is constant: a thumbnail descriptor would be a zero vector")
        return unit_vector(values, self.dimension)

    def embed_images(self, images: Sequence[EncodedImage]) -> List[EmbeddingResult]:
        results = []
        for image in images:
            try:
                results.append(EmbeddingResult.success(self.describe(image)))
            except Exception as exc:  # one bad image never fails its neighbours
                results.append(EmbeddingResult.failure(type(exc).__name__, str(exc)))
        return results
