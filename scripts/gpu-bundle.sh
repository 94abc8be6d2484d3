#!/usr/bin/env bash
# Prebuilds everything scripts/gpu-check.sh needs, for a GPU machine that has no network
# (pip cannot install nvcc there) and maybe no nvcc: built here with --features cuda, the
# `armsrace` binary and the test binaries of the CUDA tests, stripped, in gpu-bundle/
# (git-ignored; about 60 MiB at most, so it travels with a checkout). The fixtures the tests
# read are committed, so the binaries are all that is bundled; the tests find them from the
# repository root they run in (tests/common: $ARMSRACE_ROOT, else the current directory).
#
# Usage, from a checkout:
#   here (needs nvcc: bash scripts/install-nvcc.sh):  bash scripts/gpu-bundle.sh
#   on the GPU machine, same checkout + gpu-bundle/:  bash scripts/gpu-check.sh
# The GPU machine needs the NVIDIA driver (libcuda.so); libcublasLt.so is optional (GEMMs
# fall back to kernels/gemm.cu without it, with a message).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=gpu-bundle
TESTS=(gpu_ops gpu_model gpu_oom train_backends)
MAX_MIB=${ARMSRACE_BUNDLE_MAX_MIB:-60}

test_args=()
for t in "${TESTS[@]}"; do test_args+=(--test "$t"); done
echo "== cargo build --release --features cuda (armsrace binary)"
cargo build --release --features cuda --bin armsrace
echo "== cargo test --no-run --features cuda ${TESTS[*]}"
msgs=$(mktemp)
trap 'rm -f "$msgs"' EXIT
cargo test --release --features cuda --no-run --message-format=json "${test_args[@]}" >"$msgs"

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/tests"
cp target/release/armsrace "$BUNDLE/armsrace"
for t in "${TESTS[@]}"; do
  # The executable of the integration test target named $t (kind "test").
  exe=$(jq -r --arg t "$t" 'select(.reason == "compiler-artifact" and .target.name == $t
        and (.target.kind | index("test")) and .executable != null) | .executable' "$msgs" | tail -n 1)
  if [ -z "$exe" ] || [ ! -x "$exe" ]; then
    echo "gpu-bundle.sh: no test executable for tests/$t.rs in cargo's output" >&2
    exit 1
  fi
  cp "$exe" "$BUNDLE/tests/$t"
done
# Line tables (profile.release debug = 1) are most of the size; panics keep their messages.
strip --strip-debug "$BUNDLE/armsrace" "$BUNDLE"/tests/*

commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo true || echo false)
cat >"$BUNDLE/MANIFEST.json" <<JSON
{
  "commit": "$commit",
  "dirty": $dirty,
  "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "archs": "${ARMSRACE_CUDA_ARCHS:-sm_80,sm_90,compute_90}",
  "tests": [$(printf '"%s",' "${TESTS[@]}" | sed 's/,$//')]
}
JSON
size=$(du -sm "$BUNDLE" | cut -f1)
ls -la "$BUNDLE" "$BUNDLE/tests"
note=""
[ "$dirty" = true ] && note=", with uncommitted changes"
echo "gpu-bundle/: ${size} MiB (commit ${commit:0:12}${note})"
if [ "$size" -gt "$MAX_MIB" ]; then
  echo "gpu-bundle.sh: ${size} MiB is over the ${MAX_MIB} MiB a checkout may carry" >&2
  exit 1
fi
