"""Tier 1: prompt sources, the served set (online A/B split) and MLflow's prompt registry (a
real file-backed registry in a temporary folder)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from slipway import prompts as p


def write(path: Path, name: str, template: str) -> Path:
    path.write_text(
        f"name: {name}\ndescription: test\ntags:\n  owner: tests\ntemplate: |-\n"
        + "".join(f"  {line}\n" for line in template.splitlines()),
        encoding="utf-8",
    )
    return path


def test_the_shipped_sources_are_a_valid_served_set() -> None:
    served = p.from_sources()
    assert set(served.kinds) == set(p.SERVED_KINDS)
    answer = served.pick("answer", "anyone")
    assert answer.name == "slipway-answer" and answer.version == "file:answer.yaml"
    head, tail = answer.split("sources")
    assert "[1], [2]" in head and "{{question}}" in tail
    summary = served.pick("summarize", "x").format(words=12, text="Rivers flow.")
    assert "at most 12 words" in summary and "Rivers flow." in summary


def test_format_fill_and_split_name_what_is_wrong() -> None:
    prompt = p.Prompt("n", "1", "Q: {{ question }} / {{sources}}")
    assert prompt.variables == {"question", "sources"}
    assert prompt.format(question="why", sources="[1]") == "Q: why / [1]"
    with pytest.raises(p.PromptError, match=r"n/1 needs values for \['sources'\]"):
        prompt.format(question="why")
    assert p.fill("{{a}} {{b}}", a="1") == "1 {{b}}"
    with pytest.raises(p.PromptError, match="exactly once"):
        p.Prompt("n", "1", "{{sources}}{{sources}}").split("sources")


def test_a_served_set_with_wrong_variables_or_weights_is_refused() -> None:
    good = p.from_sources().kinds
    bad = dict(good)
    bad["answer"] = (p.Variant(p.Prompt("x", "1", "Just {{question}}"), 1.0),)
    with pytest.raises(p.PromptError, match=r"'answer' prompt x/1 must use exactly"):
        p.check_served(bad)
    bad["answer"] = (p.Variant(good["answer"][0].prompt, 0.0),)
    with pytest.raises(p.PromptError, match="weight must be positive"):
        p.check_served(bad)
    with pytest.raises(p.PromptError, match="No 'chat_system' prompt"):
        p.check_served({k: v for k, v in good.items() if k != "chat_system"})


def test_the_ab_split_is_stable_per_unit_and_follows_the_weights() -> None:
    base = p.from_sources().kinds
    a = base["answer"][0].prompt
    b = p.Prompt(a.name, "2", a.template.replace("using only", "with only"))
    served = p.ServedPrompts({**base, "answer": (p.Variant(a, 1.0), p.Variant(b, 3.0))})
    picks = Counter(served.pick("answer", f"user-{i}").version for i in range(8000))
    assert abs(picks["2"] / 8000 - 0.75) < 0.02
    assert all(served.pick("answer", "key:1") == served.pick("answer", "key:1") for _ in range(5))
    assert served.versions()["answer"] == [
        {"name": "slipway-answer", "version": a.version, "weight": 1.0},
        {"name": "slipway-answer", "version": "2", "weight": 3.0},
    ]
    back = p.ServedPrompts.from_json(json.loads(json.dumps(served.to_json())))
    assert back.pick("answer", "user-7") == served.pick("answer", "user-7")


def test_a_bundle_serves_its_prompts_json_or_else_the_sources(tmp_path: Path) -> None:
    assert p.load_served(tmp_path).pick("answer", "u").version == "file:answer.yaml"
    served = p.from_sources()
    served.save(tmp_path)
    assert p.load_served(tmp_path).versions() == served.versions()
    (tmp_path / p.PROMPTS_FILE).write_text('{"answer": [{"name": "x"}]}')
    with pytest.raises(p.PromptError, match="not a valid served prompt set"):
        p.load_served(tmp_path)


def test_bad_sources_and_references_name_the_fix(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: x\n")
    with pytest.raises(p.PromptError, match="needs a 'template'"):
        p.load_file(tmp_path / "bad.yaml")
    with pytest.raises(p.PromptError, match="No prompt file"):
        p.resolve(str(tmp_path / "missing.yaml"))
    with pytest.raises(p.PromptError, match="use 'name@alias'"):
        p.resolve("just-a-name", f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_registry_versions_only_changes_and_resolves_selections(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    src = tmp_path / "src"
    src.mkdir()
    for kind in p.SERVED_KINDS:
        shipped = p.from_sources().pick(kind, "-")
        write(src / f"{kind}.yaml", shipped.name, shipped.template)
    first = p.sync_sources(uri, src)
    assert {x.version for x in first} == {"1"}
    assert {x.version for x in p.sync_sources(uri, src)} == {"1"}  # unchanged: no new version
    answer = p.load_file(src / "answer.yaml")
    write(src / "answer.yaml", answer.name, answer.template.replace("only", "just"))
    second = p.register(p.load_file(src / "answer.yaml"), uri, alias="candidate")
    assert second.version == "2" and "just" in second.template
    assert p.resolve("slipway-answer@candidate", uri).version == "2"
    assert p.resolve("prompts:/slipway-answer/1", uri).template == answer.template
    served = p.serve_selection({"answer": {"1": 0.5, "candidate": 0.5}}, uri)
    assert [v.prompt.version for v in served.variants("answer")] == ["1", "2"]
    assert served.pick("summarize", "-").ref == "slipway-summarize/1"
    with pytest.raises(p.PromptError, match="No prompt prompts:/slipway-answer/9"):
        p.serve_selection({"answer": "9"}, uri)
    with pytest.raises(p.PromptError, match="Unknown prompt kinds"):
        p.serve_selection({"answers": "latest"}, uri)
