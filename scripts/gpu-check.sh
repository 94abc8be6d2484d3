#!/usr/bin/env bash
# On a GPU machine, one command: installs the nvcc wheels if needed, builds with --features
# cuda, runs the CUDA op and model tests (tests/gpu_ops.rs, tests/gpu_model.rs) on the device,
# then the GPU benchmarks (src/backend/gpu/bench.rs), and writes one JSON summary to
# ${OUT:-target}/gpu-check.json. Budget: under 8 minutes on an H100/H200.
#
# Usage: bash scripts/gpu-check.sh
# Env:   ARMSRACE_BENCH_ITERS (default 3), ARMSRACE_CUDA_ARCHS (default sm_80,sm_90,compute_90)
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-target}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu-check.log"
: >"$LOG"
t0=$(date +%s)
status=ok
step() { echo "== $*" | tee -a "$LOG"; }

if [ -z "${NVCC:-}" ] && ! command -v nvcc >/dev/null \
  && [ ! -x .venv-cuda/lib/python3.11/site-packages/nvidia/cu13/bin/nvcc ]; then
  step "installing nvcc wheels"
  bash scripts/install-nvcc.sh >>"$LOG" 2>&1 || status=install-failed
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
step "device: ${gpu:-none visible to nvidia-smi}"

tests_rc=-1
bench_rc=-1
if [ "$status" = ok ]; then
  step "build (--features cuda)"
  if cargo build --release --features cuda --tests >>"$LOG" 2>&1; then
    step "CUDA tests"
    timeout 300 cargo test --release --features cuda --test gpu_ops --test gpu_model 2>&1 \
      | tee -a "$LOG" | grep -E "^test |test result|SKIPPED" || true
    tests_rc=${PIPESTATUS[0]}
    step "benchmarks"
    ARMSRACE_BENCH_JSON="$OUTDIR/gpu-bench.json" ARMSRACE_BENCH_ITERS=${ARMSRACE_BENCH_ITERS:-3} \
      timeout 240 cargo test --release --features cuda --test gpu_ops gpu_benchmarks -- --ignored --nocapture \
      >>"$LOG" 2>&1
    bench_rc=$?
  else
    status=build-failed
  fi
fi
passed=$(grep -hoE "[0-9]+ passed" "$LOG" | awk '{s+=$1} END {print s+0}')
failed=$(grep -hoE "[0-9]+ failed" "$LOG" | awk '{s+=$1} END {print s+0}')
skipped=$(grep -c "SKIPPED" "$LOG")
bench=$(cat "$OUTDIR/gpu-bench.json" 2>/dev/null || echo null)
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ] || { [ "$status" = ok ] && status=failed; }
cat >"$OUTDIR/gpu-check.json" <<JSON
{
  "status": "$status",
  "device": "${gpu:-none}",
  "seconds": $(( $(date +%s) - t0 )),
  "tests": {"exit_code": $tests_rc, "passed": $passed, "failed": $failed, "skipped_lines": $skipped},
  "bench_exit_code": $bench_rc,
  "bench": $bench,
  "log": "$LOG"
}
JSON
cat "$OUTDIR/gpu-check.json"
[ "$status" = ok ]
