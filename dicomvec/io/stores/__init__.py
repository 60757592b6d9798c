"""Vector stores: one core (``VectorStore``) and thin SQL dialects, chosen by URL scheme.

``sqlite:///out/dicomvec.db`` (embedded default), ``postgresql://...``, ``iris://...``.
"""
from dicomvec.io.stores.base import Hit, ImageRow, SinkConfig, VectorStore

__all__ = ["Hit", "ImageRow", "SinkConfig", "VectorStore"]
