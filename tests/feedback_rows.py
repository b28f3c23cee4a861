"""A row as `slipway feedback export` writes it, shared by the feedback and training tests."""

from __future__ import annotations


def exported_row(rating: str, **kw: object) -> dict[str, object]:
    """A rated answer about Warsaw citing three chunks; ``kw`` overrides fields."""
    return {
        "request_id": f"r-{rating}",
        "question": "Where is Warsaw?",
        "answer": "In Poland [1].",
        "citations": ["warsaw#0", "warsaw#3", "vistula#1"],
        "rating": rating,
        "expected_chunk_ids": None,
        **kw,
    }
