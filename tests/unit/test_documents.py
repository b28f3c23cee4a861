"""Tier 1: document readers, cleaning, de-duplication and chunking."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from slipway.documents import clean_text, read_corpus
from slipway.documents.chunking import chunk_documents, load_tokenizer, split_text
from slipway.documents.readers import SourceError, detect_format
from slipway.models import embedder_source


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose content stream shows ``text`` (no PDF library needed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>"
        ),
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out


def test_clean_text() -> None:
    assert clean_text("  a\u00a0 b \n\n\n\n c ") == "a b\n\nc"
    assert clean_text("ﬁle\x00\r\nnext") == "file\nnext"  # NFKC ligature, control char, CRLF


def test_directory_tree_reads_every_kind_and_reports_the_bad_ones(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("Plain text document about turbulent boundary layers.")
    (tmp_path / "b.md").write_text(
        "# Wing design\n\nNotes on the design of swept wings in transonic flow."
    )
    (tmp_path / "sub" / "c.html").write_text(
        "<html><head><title>Heat</title><style>p{}</style></head><body><p>Heat transfer in "
        "hypersonic flow.</p><script>alert(1)</script></body></html>"
    )
    (tmp_path / "d.pdf").write_bytes(minimal_pdf("Stagnation point heating of blunt bodies"))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait, a drink served hot".encode("latin-1"))
    (tmp_path / "image.png").write_bytes(b"\x89PNG")  # not a document type: ignored
    docs = read_corpus(tmp_path, min_chars=10)
    by_id = {d.id: d for d in docs.documents}
    assert set(by_id) == {"a.txt", "b.md", "sub/c.html", "d.pdf"}
    assert by_id["b.md"].title == "Wing design"
    assert by_id["sub/c.html"].title == "Heat"
    assert "alert" not in by_id["sub/c.html"].text and "hypersonic" in by_id["sub/c.html"].text
    assert "Stagnation point heating" in by_id["d.pdf"].text
    assert set(docs.skipped) == {"broken.pdf", "latin1.txt"}
    assert "pdf" in docs.skipped["broken.pdf"] and "text" in docs.skipped["latin1.txt"]
    assert "2 skipped" in docs.summary()


def test_jsonl_duplicates_short_and_broken_rows(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    rows = [
        {"_id": "1", "title": "T", "text": "A long enough document text."},
        {"_id": "2", "title": "T", "text": "A long enough   document text."},  # same after cleaning
        {"_id": "3", "text": "short"},
        {"_id": "1", "text": "Another text reusing the first id."},
        ["not", "an", "object"],
        {"_id": "5", "body": "no text field"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken json\n")
    docs = read_corpus(path, min_chars=10)
    assert [d.id for d in docs.documents] == ["1"]
    assert docs.duplicates == 1
    assert docs.skipped["3"].startswith("text shorter")
    assert "duplicate id" in docs.skipped["1"]
    assert {"corpus.jsonl:5", "corpus.jsonl:6", "corpus.jsonl:7"} <= set(docs.skipped)


def test_csv_columns_and_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "mail.csv"
    path.write_text(
        'Message ID,Subject,Message,Spam/Ham\n1,Hello,"A message body, with a comma.",ham\n'
        '2,Offer,"Buy now, a limited offer today",spam\n'
    )
    from slipway.documents.readers import CsvColumns

    docs = read_corpus(
        path,
        min_chars=5,
        columns=CsvColumns(
            id="Message ID", text="Message", title="Subject", metadata=("Spam/Ham",)
        ),
    )
    assert [(d.id, d.title, d.metadata["Spam/Ham"]) for d in docs.documents] == [
        ("1", "Hello", "ham"),
        ("2", "Offer", "spam"),
    ]
    with pytest.raises(SourceError, match="no column"):
        read_corpus(path, columns=CsvColumns(id="id", text="body"))


def test_format_detection_and_errors(tmp_path: Path, shared_data: Path) -> None:
    assert detect_format(shared_data / "cranfield") == "beir"
    assert detect_format(tmp_path) == "directory"
    with pytest.raises(SourceError, match="format"):
        detect_format(tmp_path / "x.parquet")
    with pytest.raises(SourceError, match="does not exist"):
        read_corpus(tmp_path / "missing.jsonl")
    cranfield = read_corpus(shared_data / "cranfield")
    assert len(cranfield.documents) + len(cranfield.skipped) + cranfield.duplicates == 1400


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(embedder_source().path)


def test_chunks_respect_size_overlap_and_word_boundaries(tokenizer, shared_data: Path) -> None:
    docs = read_corpus(shared_data / "cranfield").documents[:50]
    chunks = chunk_documents(docs, tokenizer, chunk_tokens=48, overlap_tokens=8).chunks
    assert len(chunks) > len(docs)
    by_doc: dict[str, list] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.doc_id, []).append(chunk)
        assert chunk.n_tokens <= 48
        assert len(tokenizer.encode(chunk.text, add_special_tokens=False).ids) <= 48
        assert chunk.id == f"{chunk.doc_id}#{chunk.position}"
    for doc in docs:
        pieces = by_doc[doc.id]
        for piece in pieces:
            start = doc.text.find(piece.text)
            assert start >= 0
            end = start + len(piece.text)
            assert start == 0 or doc.text[start - 1].isspace()  # never starts inside a word
            assert end == len(doc.text) or doc.text[end].isspace()  # never ends inside one
        # Consecutive chunks overlap, and together they cover the whole document.
        for a, b in itertools.pairwise(pieces):
            assert doc.text.find(b.text) < doc.text.find(a.text) + len(a.text)
        assert pieces[-1].text.split()[-1] == doc.text.split()[-1]


def test_split_text_edge_cases(tokenizer) -> None:
    assert split_text("", tokenizer, 16, 2) == []
    assert split_text("one two", tokenizer, 16, 2) == [("one two", 2)]
    long_word = "x" * 400  # a single word longer than a chunk is the one allowed cut
    assert all(n <= 16 for _, n in split_text(long_word, tokenizer, 16, 2))
    with pytest.raises(ValueError, match="chunk_tokens"):
        split_text("a b", tokenizer, 4, 0)
    with pytest.raises(ValueError, match="overlap"):
        split_text("a b", tokenizer, 16, 8)


def test_gzipped_jsonl_and_csv_are_read_as_streams(tmp_path: Path) -> None:
    import gzip

    from slipway.documents.readers import CsvColumns

    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as out:
        out.write('{"_id": "a", "text": "a compressed document about the ocean"}\n')
    assert [d.id for d in read_corpus(tmp_path / "c.jsonl.gz").documents] == ["a"]
    with gzip.open(tmp_path / "m.csv.gz", "wt", encoding="utf-8", newline="") as out:
        out.write("Message ID,Message\n7,a compressed e-mail about the meeting\n")
    docs = read_corpus(tmp_path / "m.csv.gz", columns=CsvColumns("Message ID", "Message", None))
    assert [d.id for d in docs.documents] == ["7"]


def test_the_demo_corpus_and_its_judgements_ship_in_the_package() -> None:
    from slipway.documents import default_corpus
    from slipway.documents.demo import DEMO_DIR, DEMO_EVAL_DIR, DEMO_QA
    from slipway.retrieval.evaluation import JudgedQueries

    docs = read_corpus(default_corpus())
    assert len(docs.documents) == 240 and not docs.skipped and docs.duplicates == 0
    assert Path(docs.source).is_relative_to(Path(__file__).parents[2] / "slipway")
    judged = JudgedQueries.from_beir(DEMO_EVAL_DIR)
    assert len(judged.queries) == 1190
    assert {d for rel in judged.qrels.values() for d in rel} <= {d.id for d in docs.documents}
    assert sum(1 for _ in DEMO_QA.open()) == 1190
    assert (DEMO_DIR / "LICENSE-CC-BY-SA-4.0.txt").is_file()
    assert "CC BY-SA 4.0" in (DEMO_DIR / "README.md").read_text()


def test_evaluation_dir_defaults_to_the_demo_judgements_only_for_the_demo_corpus(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from slipway.documents.demo import DEMO_CORPUS, DEMO_EVAL_DIR, evaluation_dir

    assert evaluation_dir(None, None) == DEMO_EVAL_DIR
    assert evaluation_dir(str(DEMO_CORPUS / "corpus.jsonl"), "") == DEMO_EVAL_DIR
    mine = tmp_path / "mail.csv"
    with caplog.at_level("WARNING", logger="slipway.documents.demo"):
        assert evaluation_dir(str(mine), None) is None  # no crash: no gate, and it says so
    assert "index.eval_dir is not set: the index quality gate is SKIPPED" in caplog.text
    assert str(mine) in caplog.text
    judged = tmp_path / "eval"
    (judged / "qrels").mkdir(parents=True)
    (judged / "queries.jsonl").write_text('{"_id": "q", "text": "hello"}\n')
    (judged / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td\t1\n")
    assert evaluation_dir(str(mine), str(judged)) == judged.resolve()
    with pytest.raises(FileNotFoundError, match=r"index\.eval_dir: .*nowhere.* does not exist"):
        evaluation_dir(None, str(tmp_path / "nowhere"))
    (judged / "qrels" / "test.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"index\.eval_dir: .* has no qrels/test\.tsv"):
        evaluation_dir(str(mine), str(judged))
