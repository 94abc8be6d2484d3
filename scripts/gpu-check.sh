#!/usr/bin/env bash
# On a GPU machine, one command: runs the CUDA op, model and out-of-memory tests
# (tests/gpu_ops.rs, tests/gpu_model.rs, tests/gpu_oom.rs, tests/train_backends.rs) on the
# device, then GCG, random-token and BEAST attacks on the bundled classifier, then the GPU
# benchmarks (`armsrace bench --device cuda`, src/backend/gpu/bench.rs), and writes one JSON
# summary to ${OUT:-target}/gpu-check.json. Budget: under 8 minutes on an H100/H200.
#
# Offline GPU machines (no network, maybe no nvcc): build the binaries beforehand on a
# machine with nvcc and bring gpu-bundle/ along with the checkout:
#   bash scripts/gpu-bundle.sh      # here: builds --features cuda into gpu-bundle/
#   bash scripts/gpu-check.sh       # there, from the same checkout: uses gpu-bundle/
# Without gpu-bundle/ it builds on the spot (installing the nvcc wheels first if needed,
# which needs the network).
#
# Usage: bash scripts/gpu-check.sh
# Env:   ARMSRACE_BENCH_ITERS (default 3), ARMSRACE_CUDA_ARCHS (default sm_80,sm_90,compute_90),
#        ARMSRACE_NO_BUNDLE=1 (build even when gpu-bundle/ is present),
#        ARMSRACE_TEST_TIMEOUT (seconds per test binary, default 300),
#        ARMSRACE_BENCH_TIMEOUT (seconds for the benchmarks, default 240),
#        ARMSRACE_ALLOW_SKIPS=1 (a test that skips its device leg does not fail the check)
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-target}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu-check.log"
: >"$LOG"
t0=$(date +%s)
status=ok
step() { echo "== $*" | tee -a "$LOG"; }
# Test binaries read tests/fixtures from here (tests/common/mod.rs).
export ARMSRACE_ROOT=$PWD
TESTS=(gpu_ops gpu_model gpu_oom train_backends)
ITERS=${ARMSRACE_BENCH_ITERS:-3}
TEST_TIMEOUT=${ARMSRACE_TEST_TIMEOUT:-300}
BENCH_TIMEOUT=${ARMSRACE_BENCH_TIMEOUT:-240}

# cudarc dlopens libcublasLt by name: put the toolkit's or a pip wheel's copy on the loader
# path when the system's does not already find it (GEMMs fall back to kernels/gemm.cu without).
if ! ldconfig -p 2>/dev/null | grep -q 'libcublasLt\.so'; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib \
    /opt/torch/.venv/lib/python3*/site-packages/nvidia/cublas/lib; do
    if compgen -G "$d/libcublasLt.so*" >/dev/null; then
      export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      break
    fi
  done
fi

gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
step "device: ${gpu:-none visible to nvidia-smi}"
step "libcublasLt: $( (ldconfig -p 2>/dev/null | grep -o '/[^ ]*libcublasLt\.so[^ ]*' | head -n 1) || true)${LD_LIBRARY_PATH:+ LD_LIBRARY_PATH=$LD_LIBRARY_PATH}"

bundle_commit=null
if [ -x gpu-bundle/armsrace ] && [ -z "${ARMSRACE_NO_BUNDLE:-}" ]; then
  mode=bundle
  bundle_commit=$(sed -n 's/.*"commit": *\("[^"]*"\).*/\1/p' gpu-bundle/MANIFEST.json 2>/dev/null)
  bundle_commit=${bundle_commit:-null}
  head=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  step "prebuilt binaries: gpu-bundle/ (built from $bundle_commit, checkout at \"$head\")"
  [ "$bundle_commit" = "\"$head\"" ] || step "WARNING: gpu-bundle/ was built from another commit"
  ARMSRACE=gpu-bundle/armsrace
  test_bin() { echo "gpu-bundle/tests/$1"; }
else
  mode=build
  if [ -z "${NVCC:-}" ] && ! command -v nvcc >/dev/null \
    && [ ! -x .venv-cuda/lib/python3.11/site-packages/nvidia/cu13/bin/nvcc ]; then
    step "installing nvcc wheels (needs the network; offline, use scripts/gpu-bundle.sh)"
    bash scripts/install-nvcc.sh >>"$LOG" 2>&1 || status=install-failed
  fi
  if [ "$status" = ok ]; then
    step "build (--features cuda)"
    test_args=()
    for t in "${TESTS[@]}"; do test_args+=(--test "$t"); done
    msgs=$(mktemp)
    if cargo build --release --features cuda --bin armsrace >>"$LOG" 2>&1 \
      && cargo test --release --features cuda --no-run --message-format=json "${test_args[@]}" \
        >"$msgs" 2>>"$LOG"; then
      ARMSRACE=target/release/armsrace
      # The executable of integration test target $1 (no jq needed: one JSON object a line).
      test_bin() {
        grep '"reason":"compiler-artifact"' "$msgs" | grep "\"name\":\"$1\"" \
          | grep '"kind":\["test"\]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1
      }
    else
      status=build-failed
    fi
  fi
fi

tests_rc=-1
bench_rc=-1
attacks_rc=0
if [ "$status" = ok ]; then
  step "CUDA tests"
  tests_rc=0
  for t in "${TESTS[@]}"; do
    exe=$(test_bin "$t")
    step "tests/$t.rs"
    if [ -z "$exe" ] || [ ! -x "$exe" ]; then
      echo "no test binary for $t" | tee -a "$LOG"
      tests_rc=1
      continue
    fi
    # --nocapture: the tests print SKIPPED when they found no GPU, counted below.
    timeout "$TEST_TIMEOUT" "$exe" --nocapture 2>&1 | tee -a "$LOG" | grep -E "^test |test result|SKIPPED" || true
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || tests_rc=$rc
  done
  step "attacks on the device (bundled classifier: gcg, random-token 200 it, beast)"
  for a in gcg random-token beast; do
    extra=()
    [ "$a" = beast ] && extra=(--sampler models/pythia-password-match-sampler)
    [ "$a" = random-token ] && extra=(--iterations 200)
    timeout 120 "$ARMSRACE" attack --attack "$a" "${extra[@]}" --device cuda --overwrite \
      --out "$OUTDIR/attack-$a" >>"$LOG" 2>&1 || attacks_rc=$?
    grep -h '"final_asr"\|"seconds_per_iteration"' "$OUTDIR/attack-$a/summary.json" 2>/dev/null \
      | sed "s/^/  $a/" | tee -a "$LOG"
  done
  step "benchmarks (armsrace bench --device cuda)"
  timeout "$BENCH_TIMEOUT" "$ARMSRACE" bench --device cuda --train adafactor --iters "$ITERS" --json "$OUTDIR/gpu-bench.json" \
    >>"$LOG" 2>&1
  bench_rc=$?
fi
passed=$(grep -hoE "[0-9]+ passed" "$LOG" | awk '{s+=$1} END {print s+0}')
failed=$(grep -hoE "[0-9]+ failed" "$LOG" | awk '{s+=$1} END {print s+0}')
skipped=$(grep -c "SKIPPED" "$LOG")
bench=$(cat "$OUTDIR/gpu-bench.json" 2>/dev/null || echo null)
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$attacks_rc" = 0 ] \
  || { [ "$status" = ok ] && status=failed; }
# On the GPU machine a skipped device check means the device was not reached (a broken
# driver turns every check into harness-only): that is a failure, not a pass.
if [ "$skipped" != 0 ] && [ -z "${ARMSRACE_ALLOW_SKIPS:-}" ] && [ "$status" = ok ]; then
  status=skipped-device-checks
fi
cat >"$OUTDIR/gpu-check.json" <<JSON
{
  "status": "$status",
  "mode": "$mode",
  "bundle_commit": $bundle_commit,
  "device": "${gpu:-none}",
  "seconds": $(( $(date +%s) - t0 )),
  "tests": {"exit_code": $tests_rc, "passed": $passed, "failed": $failed, "skipped_lines": $skipped},
  "attacks_exit_code": $attacks_rc,
  "bench_exit_code": $bench_rc,
  "bench": $bench,
  "log": "$LOG"
}
JSON
cat "$OUTDIR/gpu-check.json"
[ "$status" = ok ]
