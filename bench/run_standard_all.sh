#!/usr/bin/env bash
# Reproduces the standard-budget runs of record under bench/results/ (rt, trec and boolq, each with the uniform and
# the global allocation, about 1/8 of the MiniLM teacher's encoder parameters), the early-exit ablations on the
# quick budget, and the single vs per-layer threshold summary of the runs of record
# (bench/results/accuracy-of-record/, bench/accuracy_of_record.py).
# Teacher and TA are cached per task and budget under work/ and shared by both allocations of a task.
# Usage: bench/run_standard_all.sh [NAME...]   (default: every run, then the summary; NAME as in bench/results/,
#        e.g. trec-standard-global, or "summary" for the summary of the runs that exist)
# Each compress run is single-threaded (--threads 1) so two can share a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
COSTEFF=${COSTEFF:-costeff-fast}
PYTHON=${PYTHON:-python}
ONLY=" $* "
wanted() { [[ "$ONLY" == "  " || "$ONLY" == *" $1 "* ]]; }
share() {  # share SOURCE_WORK_DIR DEST_WORK_DIR STAGE...: hard-link finished stages into a variant's stage cache
  local source=$1 dest=$2; shift 2
  for stage in "$@"; do
    if [[ ! -f "$source/$stage/stage.json" ]]; then
      echo "run_standard_all.sh: $source/$stage is not finished: run its run of record first" >&2
      exit 2
    elif [[ ! -e "$dest/$stage" ]]; then
      mkdir -p "$(dirname "$dest/$stage")"
      cp -al "$source/$stage" "$dest/$stage"
    elif [[ ! -f "$dest/$stage/stage.json" ]]; then
      echo "run_standard_all.sh: $dest/$stage is an unfinished stage: delete it to share $source/$stage" >&2
      exit 2
    elif ! cmp -s "$source/$stage/stage.json" "$dest/$stage/stage.json"; then
      echo "run_standard_all.sh: $dest/$stage differs from $source/$stage (an older run of record?): delete" \
        "$dest to share the current one" >&2
      exit 2
    fi
  done
}
run() {  # run NAME TASK BUDGET [extra compress flags, later ones win...]
  local name=$1 task=$2 budget=$3; shift 3
  if ! wanted "$name"; then return; fi
  $COSTEFF compress --task-default --task "$task" --heads 2 --ffn 160 --embedding-rank 128 --budget "$budget" \
    --threads 1 --device cpu --out "work/out/$name" "$@"
  mkdir -p "bench/results/$name"
  cp "work/out/$name/report.json" "work/out/$name/report.png" "bench/results/$name/"
}
# Runs of record: the full training split, 64 tokens (boolq 256), teacher 3 epochs, TA exit distillation 3 epochs,
# recovery exit distillation 6 epochs.
run rt-standard-uniform rt standard --allocation uniform
run rt-standard-global rt standard --allocation global
run trec-standard-uniform trec standard --allocation uniform
run trec-standard-global trec standard --allocation global
# boolq's rows (139 tokens on average, up to 256) train in batches of similar length (--group-by-length: 1.8x fewer
# tokens per epoch than random batches, bench/results/padding-tokens.json); its stages take hours, so a stage cut
# short resumes from its last progress save when the same command runs again.
run boolq-standard-uniform boolq standard --allocation uniform --max-length 256 --group-by-length
run boolq-standard-global boolq standard --allocation global --max-length 256 --group-by-length
# Variants of the runs of record, each sharing what it does not change from the run of record's stage cache (hard
# links; the run of record goes first, and a variant whose shared stages differ from the run of record's is refused;
# every stage records its parameters, so a stage built another way is never reused):
# - rec3: three epochs of recovery's exit distillation (the standard budget before 2026-12-01), same slender model;
# - gentle: the paper's gentler slenderization (one pruning event per removed head, 10, with 180 distillation steps
#   after each, instead of 5 x 60), same TA;
# - hid10: the run of record's slender model recovered with the paper's 10 epochs of hidden-state distillation
#   before the exit distillation (instead of 1);
# - t2w2: distillation temperature 2 and early exits weighted 2x in the TA and in recovery, same teacher;
# - h3f256 (trec): 3 heads and FFN 256 per layer, about 1/5 of the encoder instead of 1/8, same TA.
for task in rt trec; do
  for allocation in uniform global; do
    if wanted "$task-standard-rec3-$allocation"; then
      share "work/$task-standard-len64-mean" "work/$task-standard-rec3" teacher ta h2-f160-r128-$allocation/slender
    fi
    run "$task-standard-rec3-$allocation" "$task" standard --allocation $allocation --recovery-epochs 3 \
      --work-dir "work/$task-standard-rec3"
  done
  if wanted "$task-standard-gentle-uniform"; then
    share "work/$task-standard-len64-mean" "work/$task-standard-gentle" teacher ta
  fi
  run "$task-standard-gentle-uniform" "$task" standard --allocation uniform --num-events 10 --distill-steps 180 \
    --work-dir "work/$task-standard-gentle"
  if wanted "$task-standard-hid10-uniform"; then
    share "work/$task-standard-len64-mean" "work/$task-standard-hid10" teacher ta h2-f160-r128-uniform/slender
  fi
  run "$task-standard-hid10-uniform" "$task" standard --allocation uniform --recovery-hidden-epochs 10 \
    --work-dir "work/$task-standard-hid10"
  if wanted "$task-standard-t2w2-uniform"; then
    share "work/$task-standard-len64-mean" "work/$task-standard-t2w2" teacher
  fi
  run "$task-standard-t2w2-uniform" "$task" standard --allocation uniform --kd-temperature 2 --early-exit-weight 2 \
    --work-dir "work/$task-standard-t2w2"
done
run trec-standard-h3f256-uniform trec standard --allocation uniform --heads 3 --ffn 256
# Early-exit ablations against rt-quick-e3-uniform (quick budget with three epochs of exit distillation in the TA
# and in recovery): distillation temperature 2 (soft cross-entropy scaled by T^2), early exits weighted 2x against
# the last one, exits reading [CLS] instead of the token mean. Each run has its own stage cache, so each
# fine-tunes the quick teacher again (3 minutes; seeded, the same teacher every time: 0.7915 on rt).
E3=(--allocation uniform --ta-epochs 3 --recovery-epochs 3)
run rt-quick-e3-uniform rt quick "${E3[@]}"
run rt-quick-e3-t2-uniform rt quick "${E3[@]}" --kd-temperature 2
run rt-quick-e3-w2-uniform rt quick "${E3[@]}" --early-exit-weight 2
run rt-quick-e3-cls-uniform rt quick "${E3[@]}" --exit-pooling cls
# The same three against trec-quick-t3e3-uniform (trec's quick teacher needs three epochs: 0.907).
T3E3=(--allocation uniform --teacher-epochs 3 --ta-epochs 3 --recovery-epochs 3)
run trec-quick-t3e3-uniform trec quick "${T3E3[@]}"
run trec-quick-t3e3-t2-uniform trec quick "${T3E3[@]}" --kd-temperature 2
run trec-quick-t3e3-w2-uniform trec quick "${T3E3[@]}" --early-exit-weight 2
run trec-quick-t3e3-cls-uniform trec quick "${T3E3[@]}" --exit-pooling cls
if wanted summary; then
  runs=()
  for name in rt-standard-uniform rt-standard-global trec-standard-uniform trec-standard-global \
              boolq-standard-uniform boolq-standard-global; do
    [[ -f "work/out/$name/report.json" ]] && runs+=("work/out/$name")
  done
  if ((${#runs[@]})); then
    $PYTHON bench/accuracy_of_record.py "${runs[@]}" --out bench/results/accuracy-of-record
  else
    echo "no standard-budget run under work/out yet: run bench/run_standard_all.sh rt-standard-uniform first" >&2
  fi
fi
