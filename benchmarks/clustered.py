"""Clustered unit vectors that look like embeddings (for the search benchmark and tests): a
mixture of Gaussians on the unit sphere with low-rank spread. Deterministic per seed, and fast
(generated in chunks, one matrix product each).

Each vector = normalize(centre of its cluster + spread · (its cluster's 48-d subspace) · z +
small isotropic noise), the cluster sizes uneven (Zipf-like), the centres themselves grouped in
super-clusters: neighbours are meaningful (as with CLIP embeddings, whose variance sits in few
directions), unlike uniform random vectors, where every point is about equally far from every
other and no index can do better than chance.
"""
from __future__ import annotations

import numpy as np

DIM = 1024


class Clustered:
    def __init__(self, dim: int = DIM, clusters: int = 2000, rank: int = 48, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.rank = dim, rank
        supers = rng.standard_normal((max(1, clusters // 20), dim)).astype(np.float32)
        centres = supers[rng.integers(0, len(supers), clusters)] + \
            0.7 * rng.standard_normal((clusters, dim)).astype(np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        weights = 1.0 / np.arange(1, clusters + 1) ** 0.6
        self.weights = weights / weights.sum()
        # a shared pool of directions; each cluster spreads along `rank` of them
        self.basis = np.linalg.qr(rng.standard_normal((dim, 4 * rank)))[0].T.astype(np.float32)
        self.members = np.stack([rng.choice(4 * rank, rank, replace=False)
                                 for _ in range(clusters)])
        self.decay = (1.0 / np.sqrt(np.arange(1, rank + 1))).astype(np.float32)

    def sample(self, n: int, seed: int = 1) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, 8192):
            m = min(8192, n - start)
            label = rng.choice(len(self.centres), m, p=self.weights)
            z = np.zeros((m, len(self.basis)), np.float32)
            z[np.arange(m)[:, None], self.members[label]] = \
                rng.standard_normal((m, self.rank), dtype=np.float32) * self.decay * 0.35
            x = self.centres[label] + z @ self.basis + \
                0.005 * rng.standard_normal((m, self.dim), dtype=np.float32)
            out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def clustered(n: int, seed: int = 1, dim: int = DIM) -> np.ndarray:
    """``n`` clustered unit vectors (the same mixture for every seed; ``seed`` draws)."""
    return Clustered(dim).sample(n, seed)
