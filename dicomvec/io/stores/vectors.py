"""Vector values as databases hold them: decoding every stored form, and the decimal text form.

Stored forms read by ``decode_vector``: float32 little-endian BLOB/bytea (dicomvec's), float64
BLOB (numpy's default ``tobytes()``; told apart by length), JSON array text ``[0.1, ...]``,
comma-separated text ``0.1,0.2,...`` (IRIS ``TO_VECTOR`` style), PostgreSQL ``real[]`` /
``double precision[]`` / ``numeric[]``, pgvector ``vector``/``halfvec``, IRIS ``VECTOR``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def decode_vector(value, expected: Optional[int] = None) -> np.ndarray:
    """A stored vector in any of the forms above → float64 array (``expected``: the length
    wanted, which tells a float64 BLOB from a float32 one).

    Raises ValueError for a value that is none of them."""
    if value is None:
        raise ValueError("no vector")
    if hasattr(value, "to_numpy"):  # pgvector Vector / HalfVector
        return np.asarray(value.to_numpy(), dtype=np.float64)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) % 4:
            raise ValueError(f"a {len(raw)}-byte BLOB is not a float32 or float64 vector")
        if expected and len(raw) == 8 * expected:
            return np.frombuffer(raw, dtype="<f8").astype(np.float64)
        return np.frombuffer(raw, dtype="<f4").astype(np.float64)
    if isinstance(value, str):
        text = value.strip().strip("[]").strip()
        if not text:
            raise ValueError("empty vector text")
        return np.array(text.split(","), dtype=np.float64)
    return np.asarray(value, dtype=np.float64).reshape(-1)


def vector_text(vector, dtype=np.float64) -> str:
    """Comma-separated decimal text of ``vector`` (as ``dtype``); 9 significant digits
    round-trip a float32 exactly."""
    values = np.asarray(vector, dtype=dtype).reshape(-1).tolist()
    return ",".join(["%.9g"] * len(values)) % tuple(values)
