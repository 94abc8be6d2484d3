#!/usr/bin/env bash
# A real Slurm test of `armsrace sweep --slurm` (no mock): run it by hand, as root, before
# landing changes that touch the sweep (src/sweep.rs, src/cli/sweep.rs). CI machines may
# lack root or apt, so it is not part of `cargo test`.
#
#   sudo scripts/slurm-test.sh
#
# What it does:
#   1. a single-node cluster from Debian packages: installs slurm-wlm and munge when
#      missing, makes a munge key, starts munged, writes /etc/slurm/slurm.conf (cluster
#      "armsrace", this host as its only node, one partition) and starts slurmctld and
#      slurmd, then waits until sinfo shows the node idle. A cluster this script started
#      earlier is reused (safe to run twice); a slurm.conf it did not write is left alone
#      and the test refuses, unless SLURM_TEST_USE_EXISTING=1 (then it submits to the
#      cluster that is there, without setting anything up).
#   2. builds armsrace (release; ARMSRACE_BIN=PATH to use another binary), writes a small
#      grid twice into a temporary folder (a shared `train` step per seed and an `attack`
#      per seed and threat model), runs one copy unsharded, locally, and submits the other
#      as `sweep --slurm --shards 2` (two array tasks, run concurrently on the node, that
#      race on the shared train units) with `sbatch --wait`;
#   3. requires the two output folders to be equal: every summary.json and results.jsonl
#      with the wall-time fields removed, and every checkpoint byte for byte.
# It prints PASS or FAIL on its last line and exits non-zero on failure (the temporary
# folder is kept then, and with SLURM_TEST_KEEP=1).
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
MARK="# written by armsrace scripts/slurm-test.sh"
fail() {
    echo "FAIL: $*"
    exit 1
}
step() { echo "== $*"; }

[ "$(id -u)" = 0 ] || [ "${SLURM_TEST_USE_EXISTING:-0}" = 1 ] ||
    fail "run as root (it installs and starts a single-node Slurm cluster)"

wait_idle() {
    local node=$1 state=""
    for _ in $(seq 1 60); do
        state=$(sinfo -h -n "$node" -o %T 2>/dev/null | head -1)
        case "$state" in
        idle* | mixed* | allocated*) return 0 ;;
        down* | drain* | drained* | fail*)
            scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    echo "node $node: state '${state:-unknown}'"
    return 1
}

if [ "${SLURM_TEST_USE_EXISTING:-0}" != 1 ]; then
    step "packages"
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
        ! command -v munged >/dev/null; then
        apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null ||
            fail "apt-get install slurm-wlm munge"
    fi
    echo "slurm-wlm $(dpkg-query -W -f '${Version}' slurm-wlm 2>/dev/null), $(munged --version 2>&1 | head -1)"

    step "munge"
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null ||
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none ||
            fail "cannot create /etc/munge/munge.key"
    fi
    chown munge:munge /etc/munge/munge.key /var/lib/munge /var/log/munge /run/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0700 /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force ||
            fail "cannot start munged"
        sleep 1
    fi
    munge -n | unmunge >/dev/null || fail "munge does not work (munge -n | unmunge)"
    echo "munged: ok"

    step "slurm"
    HOST=$(hostname -s)
    # The node as slurmd sees the hardware (sockets, cores, threads, memory); else nproc.
    NODE=$(slurmd -C 2>/dev/null | head -1 | grep '^NodeName=' ||
        echo "NodeName=$HOST CPUs=$(nproc)")
    CONF=$(
        cat <<EOF
$MARK
ClusterName=armsrace
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$NODE State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    )
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    if [ -f /etc/slurm/slurm.conf ] && ! grep -qF "$MARK" /etc/slurm/slurm.conf; then
        fail "/etc/slurm/slurm.conf was not written by this script; leaving it alone (set \
SLURM_TEST_USE_EXISTING=1 to test on that cluster)"
    fi
    changed=0
    if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$CONF" ]; then
        printf '%s\n' "$CONF" >/etc/slurm/slurm.conf
        changed=1
    fi
    alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
    if [ $changed = 1 ]; then
        # A new configuration: restart the daemons this script started (by their pid files).
        for p in /run/slurmd.pid /run/slurmctld.pid; do
            if alive $p; then
                kill "$(cat $p)"
                for _ in $(seq 1 20); do alive $p || break; sleep 0.5; done
            fi
        done
    fi
    if ! alive /run/slurmctld.pid; then
        slurmctld || fail "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
    fi
    for _ in $(seq 1 30); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 1; done
    if ! alive /run/slurmd.pid; then
        slurmd || fail "slurmd did not start (see /var/log/slurm/slurmd.log)"
    fi
    wait_idle "$HOST" || {
        sinfo
        tail -5 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log
        fail "the node did not become idle"
    }
    sinfo
fi

step "build"
if [ -n "${ARMSRACE_BIN:-}" ]; then
    BIN=$(readlink -f "$ARMSRACE_BIN")
else
    (cd "$REPO" && cargo build --release -q) || fail "cargo build --release"
    BIN="$REPO/target/release/armsrace"
fi
[ -x "$BIN" ] || fail "no binary at $BIN"

TMP=$(mktemp -d /tmp/armsrace-slurm-test.XXXXXX)
chmod 755 "$TMP"
for where in local slurm; do
    mkdir -p "$TMP/$where"
    cat >"$TMP/$where/grid.toml" <<EOF
out = "out"
[axes]
seed = [0, 1]
threat = ["suffix", "prefix"]

[[step]]
name = "train"
per = ["seed"]
args = ["train", "--task", "password-match", "--from", "$REPO/models/pythia-password-match-sampler",
        "--epochs", "1", "--train-examples", "64", "--val-examples", "16", "--lr", "1e-3",
        "--optimizer", "adamw", "--seed", "{seed}", "--out", "{dir}"]

[[step]]
name = "attack"
args = ["attack", "--model", "{train.dir}", "--seed", "{seed}", "--threat", "{threat}",
        "--examples", "4", "--iterations", "3", "--out", "{dir}"]
EOF
done

step "unsharded, locally: $TMP/local"
"$BIN" sweep "$TMP/local/grid.toml" || fail "the local sweep"

step "sharded, on Slurm: $TMP/slurm"
"$BIN" sweep "$TMP/slurm/grid.toml" --slurm --shards 2 --cpus-per-task 1 \
    --job-name armsrace-slurm-test || fail "sweep --slurm"
SCRIPT="$TMP/slurm/out/sweep.sbatch"
cat "$SCRIPT"
grep -q '^#SBATCH --array=0-1$' "$SCRIPT" || fail "no --array=0-1 line in $SCRIPT"
timeout 900 sbatch --wait "$SCRIPT"
rc=$?
for f in "$TMP"/slurm/out/slurm-*.out; do
    echo "--- $f"
    cat "$f"
done
[ $rc = 0 ] || fail "sbatch --wait exited $rc"
n_out=$(ls "$TMP"/slurm/out/slurm-*_{0,1}.out 2>/dev/null | wc -l)
[ "$n_out" = 2 ] || fail "expected the output of array tasks 0 and 1, found $n_out"
grep -q 'shard 0/2 (from SLURM_ARRAY_TASK_ID' "$TMP"/slurm/out/slurm-*_0.out ||
    fail "task 0 did not take shard 0/2 from the environment"
grep -q 'shard 1/2 (from SLURM_ARRAY_TASK_ID' "$TMP"/slurm/out/slurm-*_1.out ||
    fail "task 1 did not take shard 1/2 from the environment"

step "compare $TMP/local/out with $TMP/slurm/out"
# The comparison (also in tests/sweep.rs): summary.json and results.jsonl with wall-time
# fields removed, checkpoints byte for byte.
python3 - "$TMP/local/out" "$TMP/slurm/out" <<'EOF' || fail "the outputs differ"
import json, os, sys

WALL = {"wall_s", "seconds_per_iteration", "seconds_per_example_iteration"}

def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in WALL and not k.endswith("_wall_s")}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v

def comparable(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            if n == "summary.json":
                out[rel] = strip(json.load(open(p)))
            elif n == "results.jsonl":
                out[rel] = [strip(json.loads(l)) for l in open(p) if l.strip()]
            elif n.endswith(".safetensors"):
                out[rel] = open(p, "rb").read()
    return out

a, b = comparable(sys.argv[1]), comparable(sys.argv[2])
only = sorted(set(a) ^ set(b))
differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])
kinds = {}
for k in a:
    kinds[os.path.basename(k)] = kinds.get(os.path.basename(k), 0) + 1
print(f"compared {len(a)} files: {kinds}")
for k in only:
    print(f"only in one: {k}")
for k in differ:
    print(f"differs: {k}")
sys.exit(0 if a and not only and not differ else 1)
EOF
step "compare the results tables (armsrace report --table-only), byte for byte"
"$BIN" report --table-only --out "$TMP/local/report" "$TMP/local/out" >/dev/null ||
    fail "report of $TMP/local/out"
"$BIN" report --table-only --out "$TMP/slurm/report" "$TMP/slurm/out" >/dev/null ||
    fail "report of $TMP/slurm/out"
cmp "$TMP/local/report/table.csv" "$TMP/slurm/report/table.csv" || fail "the tables differ"
echo "tables equal: $(($(wc -l <"$TMP/local/report/table.csv") - 1)) rows"
# Kept on failure for a look; SLURM_TEST_KEEP=1 keeps it on success too.
[ "${SLURM_TEST_KEEP:-0}" = 1 ] || rm -rf "$TMP"
echo "PASS: a Slurm array of 2 tasks gave the unsharded sweep's files"
