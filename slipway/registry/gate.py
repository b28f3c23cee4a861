"""The whole-bundle gate: a registered version becomes ``champion`` only when parity, retrieval
(on the evaluation set) and answers (on the QA set) all pass, each no worse than the champion's
own figures by more than a configured margin. Pure: the figures come in, a report goes out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# (metric, higher is better) per gate; a metric either side lacks is not compared.
RETRIEVAL_METRICS: tuple[tuple[str, bool], ...] = (
    ("hybrid_ndcg_at_10", True),
    ("hybrid_recall_at_10", True),
)
ANSWER_METRICS: tuple[tuple[str, bool], ...] = (
    ("answer_token_f1", True),
    ("answer_containment", True),
    ("citation_recall", True),
    ("abstain_f1", True),
)
GATE_TAG = "gate."  # model-version tags: gate.<gate> = pass|fail, gate.<gate>.<metric> = value


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict with the figures it compared."""

    name: str
    passed: bool
    reason: str
    figures: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)


def compare(
    name: str,
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    metrics: tuple[tuple[str, bool], ...],
    margin: float,
) -> GateResult:
    """``candidate`` passes when no metric is worse than ``champion``'s by more than
    ``margin`` (absolute); without a champion's figures there is nothing to be worse than."""
    figures = {m: float(candidate[m]) for m, _ in metrics if m in candidate}
    if not figures:
        return GateResult(name, True, f"not measured (no {name} evaluation set): not gated")
    if not champion:
        return GateResult(name, True, "no champion figures to compare with", figures)
    baseline = {m: float(champion[m]) for m in figures if m in champion}
    for metric, higher in metrics:
        if metric not in figures or metric not in baseline:
            continue
        new, old = figures[metric], baseline[metric]
        if (new < old - margin) if higher else (new > old + margin):
            return GateResult(
                name,
                False,
                f"{metric} {new:.4f} is worse than the champion's {old:.4f} "
                f"by more than {margin:g}",
                figures,
                baseline,
            )
    return GateResult(
        name, True, f"not worse than the champion (margin {margin:g})", figures, baseline
    )


@dataclass(frozen=True)
class Decision:
    """Whether the candidate becomes champion, and every gate's verdict."""

    promote: bool
    gates: tuple[GateResult, ...]

    @property
    def reason(self) -> str:
        failed = [g for g in self.gates if not g.passed]
        if not failed:
            return "all gates passed: " + "; ".join(f"{g.name}: {g.reason}" for g in self.gates)
        return "held back: " + "; ".join(f"{g.name}: {g.reason}" for g in failed)

    def tags(self) -> dict[str, str]:
        """Model-version tags: each gate's verdict and figures (what ``slipway models`` shows
        and what the next candidate is compared with)."""
        out: dict[str, str] = {}
        for gate in self.gates:
            out[f"{GATE_TAG}{gate.name}"] = "pass" if gate.passed else "fail"
            out.update({f"{GATE_TAG}{gate.name}.{k}": f"{v:.6g}" for k, v in gate.figures.items()})
        return out

    def report(self) -> str:
        """A Markdown report: one row per gate."""
        lines = [
            "| gate | verdict | figures | champion's | reason |",
            "| --- | --- | --- | --- | --- |",
        ]
        for g in self.gates:
            figures = ", ".join(f"{k}={v:.4f}" for k, v in g.figures.items())
            baseline = ", ".join(f"{k}={v:.4f}" for k, v in g.baseline.items()) or "—"
            verdict = "pass" if g.passed else "**fail**"
            lines.append(f"| {g.name} | {verdict} | {figures} | {baseline} | {g.reason} |")
        lines.append("")
        lines.append(("Promoted to champion. " if self.promote else "Not promoted. ") + self.reason)
        return "\n".join(lines)


def gate_figures(tags: Mapping[str, str], gate: str) -> dict[str, float]:
    """A version's recorded figures of ``gate`` from its tags."""
    prefix = f"{GATE_TAG}{gate}."
    figures: dict[str, float] = {}
    for key, value in tags.items():
        if key.startswith(prefix):
            try:
                figures[key.removeprefix(prefix)] = float(value)
            except ValueError:  # gate.<gate>.reason
                continue
    return figures


def decide(
    parity: GateResult,
    retrieval: Mapping[str, float],
    answers: Mapping[str, float],
    champion_tags: Mapping[str, str] | None,
    retrieval_margin: float,
    answer_margin: float,
) -> Decision:
    """Parity (already judged at registration), then retrieval and answers against the
    champion's recorded figures."""
    champion_tags = champion_tags or {}
    gates = (
        parity,
        compare(
            "retrieval",
            retrieval,
            gate_figures(champion_tags, "retrieval") if champion_tags else None,
            RETRIEVAL_METRICS,
            retrieval_margin,
        ),
        compare(
            "answers",
            answers,
            gate_figures(champion_tags, "answers") if champion_tags else None,
            ANSWER_METRICS,
            answer_margin,
        ),
    )
    return Decision(all(g.passed for g in gates), gates)
