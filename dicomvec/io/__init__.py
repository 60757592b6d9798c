"""Input/output back-ends: files, embedding providers, vector stores, dead letters."""
