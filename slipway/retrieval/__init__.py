"""Retrieval: sparse (BM25) and dense indexes, rank fusion, and IR metrics."""
