#!/usr/bin/env bash
# The study's pipeline at tiny scale, on a CPU: three GPTNeoX classifiers trained from
# scratch on PasswordMatch (N = 58k, 170k and 720k parameters: 12.4x), GCG attacks on each
# (one 24-iteration run gives ASR at every budget up to 24 iterations; 2 seeds), adversarial
# training of each (4 rounds of suffix GCG, 2 seeds), every round evaluated with suffix,
# infix 0.9 and prefix GCG, then `armsrace report`.
#
#   bash scripts/reproduce-tiny.sh            # runs under runs/tiny, report in results/tiny
#   OUT=/tmp/tiny REPORT=/tmp/tiny-report bash scripts/reproduce-tiny.sh
#
# Every step resumes: a killed run started again continues where it stopped, and finished
# steps are skipped. On 2 cores it took 64 minutes (46 of them training, while other jobs
# loaded the machine; see the README's "A tiny-scale reproduction"). Pretraining compute: the three models saw the same training tokens D (the
# same data and tokenizer recipe), so, as the study did for each family, one D for all sizes:
# read from the smallest model's trainer_state.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/tiny}
REPORT=${REPORT:-results/tiny}
SEEDS=${SEEDS:-"0 1"}
cargo build --release -q
bin=target/release/armsrace
start=$(date +%s)
log() { echo "[$(($(date +%s) - start)) s] $*"; }
# GCG at a tiny model's scale: 3 attack tokens and 16 candidates an iteration (the study:
# 10 and 128). At the study's settings GCG broke every attacked example of the smallest
# model within 4 iterations, which leaves no curve to fit.
GCG="--attack-tokens 3 --search-width 16"

# name hidden layers heads intermediate
SIZES="s 32 2 2 128
m 64 2 4 256
l 128 3 4 512"

while read -r name hidden layers heads inter; do
    log "train $name (hidden $hidden, $layers layers)"
    "$bin" train --task password-match --out "$OUT/models/pm-$name" --shape pythia-14m \
        --hidden "$hidden" --layers "$layers" --heads "$heads" --intermediate "$inter" \
        --rotary-pct 1.0 --vocab-size 1024 --tokenizer-knows-words --junk-suffix 0.3 \
        --train-examples 4000 --val-examples 400 --epochs 12 --lr 2e-3 --optimizer adamw \
        --batch-size 32 --warmup 0.05
done <<<"$SIZES"

D=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["progress"]["tokens_seen"])' \
    "$OUT/models/pm-s/trainer_state.json")
log "pretraining tokens D = $D (6 N_gen D is each model's pretraining compute)"

while read -r name _; do
    for seed in $SEEDS; do
        log "attack $name seed $seed"
        "$bin" attack --model "$OUT/models/pm-$name" --examples 40 --iterations 24 \
            --seed "$seed" --group-size 40 --pretrain-tokens "$D" $GCG \
            --out "$OUT/attack/pm-$name-seed$seed" >/dev/null
        log "adv-train $name seed $seed"
        "$bin" adv-train --model "$OUT/models/pm-$name" --out "$OUT/adv/pm-$name-seed$seed" \
            --rounds 4 --attacked-per-round 40 --iterations-from 5 --iterations-to 10 \
            --clean-examples 2000 --max-train 400 --lr 1e-3 --optimizer adamw \
            --batch-size 16 --group-size 40 --seed "$seed" --pretrain-tokens "$D" $GCG >/dev/null
        log "eval $name seed $seed: suffix, infix 0.9, prefix"
        "$bin" eval --run "$OUT/adv/pm-$name-seed$seed" --rounds all --examples 60 \
            --iterations 16 --group-size 60 --seed "$seed" --threat suffix,infix:0.9,prefix \
            --pretrain-tokens "$D" $GCG >/dev/null
    done
done <<<"$SIZES"

log "report"
"$bin" report "$OUT" --out "$REPORT"
log "done: $REPORT/summary.md"
