"""Answer-evaluation benchmark: the served bundle's answers on XQuAD-en, and a prompt A/B on
Enron e-mails.

1. Answers: a seeded sample of XQuAD-en questions (``--questions``, default 200) whose article
   is indexed, plus ``--left-out`` (default 50) questions of articles left out of the index
   (they test abstention: the right answer is none). The index is built here, in a temporary
   directory, from the XQuAD passages minus the left-out articles, with the bundle's embedder
   and the project's own index code (chunked as the main job chunks). Each question goes
   through ``/v1/answer``'s code path in-process (``slipway.evaluation``); answers, citations,
   abstentions and the judge (the served generator, a weak judge, unless ``--judge-url``) are
   scored with ``mlflow.genai.evaluate`` into an MLflow run (``--tracking-uri``).
2. A/B: two prompt versions (``prompts/spam_a.yaml`` against ``prompts/spam_b.yaml``) classify
   a seeded, balanced sample of ``--emails`` (default 200) Enron e-mails as spam or ham through
   the same bundle's OpenAI-compatible ``/v1/chat/completions``, served here by the real API
   app (uvicorn, localhost) over the same in-process models
   (``slipway.experiments.classify.compare_prompts``): accuracy of each and McNemar's exact p.

The generator's scores are what they are (SmolLM2-135M by default is far too small to answer
well); they are printed as measured, next to the targets they are read against.

    python -m bench.evaluate [--bundle DIR] [--questions 200] [--left-out 50] [--emails 200]
                             [--seed 0] [--judge-url URL --judge-model NAME]
                             [--json-label | --no-ab]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import socket
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench._common import DATA, print_machine
from slipway.config import ApiSettings, IndexSettings, ServeSettings, get_settings
from slipway.documents import Document
from slipway.documents.chunking import chunk_documents, load_tokenizer
from slipway.embedding import model_fingerprint
from slipway.embedding.cache import EmbeddingCache
from slipway.evaluation.bundle import (
    AnswerSettings,
    EvaluationReport,
    evaluate_bundle,
    make_judge,
)
from slipway.evaluation.dataset import QAExample
from slipway.evaluation.inprocess import InProcessService, in_process_service
from slipway.evaluation.judge import JudgeConfig
from slipway.onnx.bundle import OnnxBundle
from slipway.retrieval.dense import LanceDBStore
from slipway.retrieval.index import IndexDir, document_hashes, refresh_index
from slipway.serving import ServedBundle

ROOT = Path(__file__).resolve().parents[1]
XQUAD = DATA / "xquad_en"
INDEX_NAME = "xquad-eval"
TARGETS = {"citation_recall": 0.9, "marker_rate": 0.95, "abstain_f1": 0.8}


def newest_bundle() -> Path | None:
    """The most recently built bundle under ``$SLIPWAY_HOME/cache/bundles``."""
    root = get_settings().cache_dir / "bundles"
    found = [p for p in root.glob("*") if (p / "manifest.json").is_file()] if root.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


# --- data --------------------------------------------------------------------------------


def xquad() -> tuple[list[Document], list[dict[str, Any]]]:
    """XQuAD-en passages (as documents) and questions from the shared data."""
    passages, qa = XQUAD / "passages.jsonl", XQUAD / "qa.jsonl"
    for path in (passages, qa):
        if not path.is_file():
            raise SystemExit(f"{path} not found; the benchmark needs ../shared/data.")
    from slipway.documents import read_corpus

    docs = read_corpus(passages, "jsonl").documents
    rows = [json.loads(line) for line in qa.read_text(encoding="utf-8").splitlines() if line]
    return docs, rows


def article(passage_id: str) -> str:
    """XQuAD's article of a passage id (``<article>#<n>``)."""
    return passage_id.rsplit("#", 1)[0]


def split_questions(
    rows: list[dict[str, Any]], questions: int, left_out: int, seed: int
) -> tuple[set[str], list[QAExample]]:
    """Articles left out of the index (seeded, as few as give ``left_out`` questions) and the
    evaluation set: ``questions`` answerable ones of the other articles, then ``left_out`` of
    the left-out articles (no gold answer: the system should abstain), each seeded."""
    rng = random.Random(seed)
    by_article: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_article[article(row["passage_id"])].append(row)
    order = sorted(by_article)
    rng.shuffle(order)
    out: set[str] = set()
    pool: list[dict[str, Any]] = []
    for name in order:
        if len(pool) >= left_out:
            break
        out.add(name)
        pool += by_article[name]
    kept = [r for r in rows if article(r["passage_id"]) not in out]
    if len(kept) < questions:
        raise SystemExit(f"only {len(kept)} questions outside the left-out articles")
    answerable = [
        QAExample(
            id=r["id"],
            question=r["question"],
            answers=tuple(r["answers"]),
            doc_ids=(r["passage_id"],),
        )
        for r in rng.sample(kept, questions)
    ]
    unanswerable = [
        QAExample(id=r["id"], question=r["question"]) for r in rng.sample(pool, left_out)
    ]
    return out, answerable + unanswerable


def build_index(
    root: Path, docs: list[Document], bundle: OnnxBundle, service_threads: int
) -> tuple[str, float]:
    """Index and publish ``docs`` under ``root`` with the bundle's embedder, chunked as the
    main job chunks them (200 tokens, 32 overlap); returns the version and the seconds."""
    from slipway.embedding import OnnxEmbedder

    started = time.perf_counter()
    model_dir = bundle.role_dir("embedder")
    chunks = chunk_documents(docs, load_tokenizer(model_dir), 200, 32).chunks
    index = IndexDir(root, INDEX_NAME)
    cache = EmbeddingCache(root / "embeddings.sqlite")
    try:
        version = refresh_index(
            index,
            LanceDBStore(index.lance_dir),
            chunks,
            document_hashes(docs),
            OnnxEmbedder(model_dir, threads=service_threads),
            model_fingerprint(model_dir),
            cache,
        )
    finally:
        cache.close()
    index.publish(version.version)
    return version.version, time.perf_counter() - started


# --- the A/B -----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prompt_ab(
    service: InProcessService, key: str, emails: int, seed: int, json_label: bool
) -> dict[str, float]:
    """Spam-or-ham A/B of the two packaged prompts through the real API app (uvicorn on
    localhost) over ``service``'s models: ``ab_acc_a``, ``ab_acc_b``, ``ab_mcnemar_p``.
    ``json_label``: the label by constrained decoding, else free text (configs/prompt_ab.yaml's
    default), where an answer that does not start with the label counts as invalid."""
    import uvicorn

    from slipway.api.app import create_app
    from slipway.experiments.classify import Endpoint, compare_prompts, load_labelled_csv
    from slipway.prompts import load_file

    data = load_labelled_csv(DATA / "enron_spam" / "enron_spam_data.csv.gz", emails, seed)
    prompts = [
        load_file(ROOT / "prompts" / "spam_a.yaml"),
        load_file(ROOT / "prompts" / "spam_b.yaml"),
    ]
    app = create_app(service.resources.serve, service.resources)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="bench-evaluate-api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit("the API app did not start")
            time.sleep(0.1)
        endpoint = Endpoint(
            base_url=f"http://127.0.0.1:{port}/v1",
            model=service.resources.served.model_name,
            api_key=key,
            concurrency=2,
            seed=seed,
            json_label=json_label,
        )
        comparison = compare_prompts(prompts, data, endpoint, positive="spam")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    for s in comparison.scores:
        print(
            f"  prompt {s.key} ({s.name} {s.version}): accuracy {s.accuracy:.3f} "
            f"[{s.accuracy_ci[0]:.3f}, {s.accuracy_ci[1]:.3f}] f1(spam) {s.f1:.3f} "
            f"invalid {s.invalid_rate:.3f}"
        )
    test = comparison.tests[0]
    print(
        f"  McNemar exact: both right {test.both_right}, only A {test.only_baseline}, only B "
        f"{test.only_challenger}, both wrong {test.both_wrong}, p={test.p_value:.4g}"
    )
    print(f"  decision: {comparison.decision}")
    return comparison.headline()


# --- main --------------------------------------------------------------------------------


def print_report(report: EvaluationReport, index_s: float) -> None:
    """Absolute figures of the answer evaluation."""
    c = report.counts
    print(
        f"answers: {c['questions']} questions ({c['answerable']} answerable, "
        f"{c['unanswerable']} of left-out articles), {c['abstained']} abstentions, "
        f"{c['judged']} judged; model {report.model}, index {report.index_version} "
        f"(built in {index_s:.0f}s); evaluation {report.seconds:.0f}s; MLflow run {report.run_id}"
    )
    print(f"prompt versions: {report.prompt_versions}")
    for name, value in sorted(report.metrics.items()):
        print(f"  {name:34s} {value:.4f}")
    for name, target in TARGETS.items():
        value = report.metrics.get(name)
        shown = "n/a" if value is None else f"{value:.3f}"
        verdict = "n/a" if value is None else ("met" if value >= target else "NOT met")
        print(f"target {name} >= {target}: {shown} ({verdict})")
    if report.judge is not None:
        print(f"judge: {report.judge.name}{' (WEAK JUDGE)' if report.judge.weak else ''}")
        if report.judge.note:
            print(f"  {report.judge.note}")
    seconds = sorted(e.seconds for e in report.examples)
    print(
        f"seconds per answer: p50 {seconds[len(seconds) // 2]:.2f} max {seconds[-1]:.2f}; "
        "three answers:"
    )
    for e in [e for e in report.examples if not e.scores.abstained][:3]:
        print(f"  Q: {e.question}\n  gold: {e.answers}\n  A: {e.answer[:300]!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bundle", type=Path, help="Bundle (default: newest built one).")
    p.add_argument("--questions", type=int, default=200)
    p.add_argument("--left-out", type=int, default=50)
    p.add_argument("--emails", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--judge-url", help="An OpenAI-compatible judge (…/v1); default: the bundle.")
    p.add_argument("--judge-model", help="The judge's model name at --judge-url.")
    p.add_argument("--no-ab", action="store_true", help="Skip the prompt A/B.")
    p.add_argument(
        "--json-label",
        action="store_true",
        help="A/B labels by constrained decoding (response_format), not free text.",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI of the run (default: sqlite under $SLIPWAY_HOME/bench).",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "mlflow", "alembic", "urllib3", "slipway.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print_machine(args.threads)
    bundle_dir = args.bundle or newest_bundle()
    if bundle_dir is None:
        raise SystemExit("No bundle: pass --bundle DIR (or build one with the main job).")
    bundle = OnnxBundle.load(bundle_dir.resolve())
    docs, rows = xquad()
    left_out, examples = split_questions(rows, args.questions, args.left_out, args.seed)
    indexed = [d for d in docs if article(d.id) not in left_out]
    print(
        f"bundle: {bundle.root} | XQuAD: {len(docs)} passages, {len(rows)} questions; left out "
        f"{len(left_out)} articles ({len(docs) - len(indexed)} passages): {sorted(left_out)}"
    )
    import mlflow

    home = get_settings().home / "bench"
    home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(args.tracking_uri or f"sqlite:///{home / 'evaluate-mlflow.db'}")
    mlflow.set_experiment("bench-evaluate")
    print(f"MLflow: {mlflow.get_tracking_uri()} (experiment bench-evaluate)")
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        root = Path(tmp)
        version, index_s = build_index(root / "indexes", indexed, bundle, args.threads)
        print(f"index: {len(indexed)} passages, {version}, {index_s:.1f}s")
        from slipway.api.keys import FileKeyStore, Scope, create_key

        keys = root / "api_keys.json"
        key, _ = create_key(FileKeyStore(keys), "bench-evaluate", [Scope.ADMIN])
        service = in_process_service(
            ServedBundle(bundle, "slipway", "local"),
            ServeSettings(index_name=INDEX_NAME),
            IndexSettings(index_root=root / "indexes"),
            threads=args.threads,
            api=ApiSettings(
                profile="local",
                api_keys_file=keys,
                key_store="file",
                rate_limit_store="memory",
                cache="off",
                default_requests_per_minute=None,
            ),
        )
        judge_config = JudgeConfig(base_url=args.judge_url, model=args.judge_model)
        with mlflow.start_run(run_name="bench-evaluate"):
            report = evaluate_bundle(
                service,
                examples,
                make_judge(judge_config, service),
                AnswerSettings(),
                qa_set=f"xquad_en seed={args.seed}",
            )
        print_report(report, index_s)
        ab = {"ab_acc_a": float("nan"), "ab_acc_b": float("nan"), "ab_mcnemar_p": float("nan")}
        if not args.no_ab:
            started = time.perf_counter()
            mode = "constrained JSON label" if args.json_label else "free-text label"
            print(f"A/B on {args.emails} Enron e-mails (spam_a vs spam_b, {mode}):")
            ab = prompt_ab(service, key, args.emails, args.seed, args.json_label)
            print(f"  A/B took {time.perf_counter() - started:.0f}s")
    m = report.metrics

    def fmt(name: str) -> str:
        value = m.get(name)
        return "nan" if value is None else f"{value:.4f}"

    print(
        f"RESULT answer_containment={fmt('answer_containment')} token_f1={fmt('answer_token_f1')} "
        f"citation_recall={fmt('citation_recall')} marker_rate={fmt('marker_rate')} "
        f"abstain_f1={fmt('abstain_f1')} ab_acc_a={ab['ab_acc_a']:.4f} "
        f"ab_acc_b={ab['ab_acc_b']:.4f} ab_mcnemar_p={ab['ab_mcnemar_p']:.4g} "
        f"judge_agreement={fmt('judge_agreement')} eval_s={report.seconds:.1f}"
    )


if __name__ == "__main__":
    main()
