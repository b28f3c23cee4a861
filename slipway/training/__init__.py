"""Retraining: training data for the retriever and the re-ranker, and the trainers."""
