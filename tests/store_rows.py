"""Rows and vectors for the store tests: deterministic, MIMIC-shaped identifiers; ``lookup``
reads rows back by key."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dicomvec.io.stores import ImageRow
from dicomvec.io.stores.tables import ReportRow

DIM = 1024


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    vec = np.random.default_rng(seed).standard_normal(dim)
    return (vec / np.linalg.norm(vec)).astype(np.float32)


def make_row(i: int, provider: str = "nvclip", view: str = "PA", vector=None,
             version: str = "v1", **changes) -> ImageRow:
    values = dict(SubjectID=f"1{i:07d}", StudyID=f"5{i:07d}", ImageID=f"img-{i:05d}",
                  ImagePath=f"files/p10/p1{i:07d}/s5{i:07d}/img-{i:05d}.dcm",
                  DicomFile=f"img-{i:05d}.dcm", ViewPosition=view,
                  Vector=unit(i) if vector is None else vector, EmbeddingModel="nvclip-test",
                  Provider=provider, PreprocessVersion=version)
    values.update(changes)
    return ImageRow(**values)


def make_report_row(study: str, vector=None, provider: str = "nvclip", text: str = "text",
                    **changes) -> ReportRow:
    """A reports-table row of subject 10000001 (a text-only row when ``vector`` is None)."""
    values = dict(SubjectID="10000001", StudyID=study, ReportPath=f"p10/p10000001/s{study}.txt",
                  Findings=f"findings {study}", Impression=f"impression {study}",
                  EmbeddedText=text, Vector=vector,
                  EmbeddingModel="nvidia/nvclip" if vector is not None else None,
                  Provider=provider if vector is not None else None)
    values.update(changes)
    return ReportRow(**values)


def lookup(store, keys: Sequence[str]) -> dict:
    """Rows of a ``store`` with a single-column key, by key (``{key: hit}``); unknown keys are
    absent."""
    keys = list(dict.fromkeys(k for k in keys if k))
    found = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        sql = (f"SELECT {', '.join(store.spec.hit_columns)} FROM "
               f"{store.dialect.qualified_table} WHERE {store.spec.key[0]} IN "
               f"({store.dialect.placeholders(len(chunk))})")
        for row in store.query(sql, chunk, "lookup"):
            found[row[0]] = store.spec.hit_type(*row)
    return found
