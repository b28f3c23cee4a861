"""Slipway's use cases, framework-free and typed in and out: search, answer, summarize, graph
look-ups, and the inference facade they share (embeddings and generations, cached and bounded)."""
