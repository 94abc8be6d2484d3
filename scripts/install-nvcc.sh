#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler (nvcc, ptxas, headers) and libclang (for bindgen) from PyPI
# wheels into .venv-cuda at the repository root. No GPU and no system CUDA needed: this is
# all `cargo build --features cuda` requires. The nvidia-* versions are pinned together on
# purpose: nvcc, nvvm, crt and cccl from different releases refuse to work with each other.
#
# Usage: bash scripts/install-nvcc.sh        (idempotent; re-run to repair)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-cuda
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.88 \
  nvidia-cuda-crt==13.0.88 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85 \
  libclang==18.1.1
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CU="$SITE/nvidia/cu13"
if [ ! -x "$CU/bin/nvcc" ]; then
  echo "install-nvcc.sh: nvcc not found at $CU/bin/nvcc after install" >&2
  exit 1
fi
# The wheels ship nvvm/ and the headers as siblings of bin/, where nvcc looks for them.
"$CU/bin/nvcc" --version | tail -n 2
ls "$SITE/clang/native/"libclang*.so* >/dev/null
echo "nvcc:     $CU/bin/nvcc"
echo "libclang: $(ls "$SITE/clang/native/"libclang*.so* | head -n 1)"
