"""Query vectors: a text, or a DICOM file taken through EXACTLY the ingestion path.

``image_record(path, size, normalization, image_format)`` runs the pipeline's own stage code
(``dicomvec.imaging.record_steps``, what ``DecodePixels`` → ``NormalizePixels`` →
``ResizeAndEncode`` run) with the same options, so a query image becomes the same model input it
would have become had it been ingested. A local file is read without Beam (start-up stays
light); a bucket path through Beam's filesystems (``io.open_path``). ``embed_query_image`` /
``embed_query_text`` send it to the provider and return a unit vector, or raise a
``UserError`` (one plain line from the CLI) that says why not.
"""
from __future__ import annotations

import numpy as np

from dicomvec.errors import UserError
from dicomvec.imaging import read_dataset, record_steps
from dicomvec.io.open_path import open_path
from dicomvec.io.providers import EmbeddingProvider, EncodedImage, TextNotSupportedError
from dicomvec.record import ImageRecord


class QueryImageError(UserError):
    """The query image could not be turned into a model input."""


def image_record(path: str, image_size: int, normalization: str,
                 image_format: str) -> ImageRecord:
    """The ingestion stages, in order, on one file → record with ``encoded``/``mime`` set."""
    def decode(record: ImageRecord) -> ImageRecord:
        with open_path(record.path) as stream:
            dataset = read_dataset(stream)
        return record_steps.decode(record, dataset, image_size)

    record = ImageRecord(path=path)
    for stage, step in (
            ("decode", decode),
            ("normalize", lambda r: record_steps.normalize(r, normalization)),
            ("resize", lambda r: record_steps.resize_and_encode(r, image_size, image_format))):
        try:
            record = step(record)
        except Exception as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise QueryImageError(f"cannot use query image {path}: {stage} failed: "
                                  f"{type(exc).__name__}: {message}") from None
    return record


def _unit(result, what: str) -> np.ndarray:
    if not result.ok:
        raise UserError(f"the provider could not embed the {what}: {result.error_type}: "
                        f"{result.error_message}")
    return result.vector


def embed_query_image(provider: EmbeddingProvider, record: ImageRecord) -> np.ndarray:
    results = provider.embed_images([EncodedImage(record.encoded, record.mime)])
    return _unit(results[0], f"query image {record.path}")


def embed_query_text(provider: EmbeddingProvider, text: str) -> np.ndarray:
    if not text or not text.strip():
        raise UserError("--text is empty")
    if not provider.semantic:
        raise TextNotSupportedError(
            f"text search needs a semantic model: the {provider.name!r} provider is a "
            "non-semantic image descriptor with no text embedding; use --provider openclip (a local model) or nvclip")
    return _unit(provider.embed_texts([text.strip()])[0], "query text")
