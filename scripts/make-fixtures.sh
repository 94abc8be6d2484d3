#!/usr/bin/env bash
# Regenerates the reference fixtures under tests/fixtures/ from torch + transformers.
# Python is used ONLY here (fixture generation); it is never a runtime dependency of armsrace.
#
# Usage: bash scripts/make-fixtures.sh            (idempotent; reuses the venv if present)
#        SKIP_INSTALL=1 bash scripts/make-fixtures.sh   (do not touch the venv, just regenerate)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-fixtures"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating venv $VENV"
  "$PY" -m venv "$VENV"
fi

if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  echo "== installing packages (PyPI; PIP_FIND_LINKS=${PIP_FIND_LINKS:-<unset>})"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # Plain PyPI torch (the CPU-only index is not reachable here); CPU execution is used.
  "$VENV/bin/python" -m pip install --quiet torch transformers tokenizers safetensors numpy
fi

echo "== versions"
"$VENV/bin/python" - <<'PYEOF'
import sys, torch, transformers, tokenizers, safetensors, numpy
print("python      ", sys.version.split()[0])
print("torch       ", torch.__version__)
print("transformers", transformers.__version__)
print("tokenizers  ", tokenizers.__version__)
print("safetensors ", safetensors.__version__)
print("numpy       ", numpy.__version__)
PYEOF

echo "== generating fixtures"
cd "$ROOT"
CUDA_VISIBLE_DEVICES="" "$VENV/bin/python" tests/fixtures/make_fixtures.py "$@"

echo "== total fixture size"
du -sh "$ROOT/tests/fixtures"
