"""Adapters that expose Slipway search and embeddings to other frameworks."""
