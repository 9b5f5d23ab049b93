#!/usr/bin/env bash
# Issue 31's speed targets, out of sample, on a front of record (bench/run_front.sh <name> first): the same compress
# command with --target-speedup 10 and 19 instead of --max-drop, so the most accurate (width, threshold) at least
# that many times cheaper than the teacher is chosen on the dev rows and its accuracy is scored by 5-fold
# cross-validation of that choice (report.json's calibration.out_of_sample). Every training stage is cached: only
# calibration runs (the runs from before 2026-12-08 pin the 1 hidden-state recovery epoch they were trained with).
# Writes bench/results/front/<name>/target-speedup-<x>.json.
# Usage: bench/run_targets.sh NAME...   (NAME one of trec-standard, rt-standard, boolq-standard,
#        trec-standard-augment2(-hid10), rt-standard-steps540(-hid10))
set -euo pipefail
cd "$(dirname "$0")/.."
COSTEFF=${COSTEFF:-costeff-fast}
for name in "$@"; do
  task=${name%%-*} front=(--front 0.5,0.25)
  case $name in
    trec-standard|rt-standard) extra=(--recovery-hidden-epochs 1) ; work=work/$task-standard-len64-mean ;;
    boolq-standard) extra=(--max-length 256 --group-by-length) ; work=work/boolq-standard-len256-mean ;;
    trec-standard-augment2) extra=(--augment 2 --recovery-hidden-epochs 1) front=(--front 0.25) ; work=work/trec-standard-len64-mean ;;
    rt-standard-steps540) extra=(--distill-steps 540 --recovery-hidden-epochs 1) front=() ; work=work/rt-standard-steps540 ;;
    rt-standard-steps540-hid10) extra=(--distill-steps 540 --recovery-hidden-epochs 10) front=()
      work=work/rt-standard-steps540-hid10 ;;
    trec-standard-augment2-hid10) extra=(--augment 2 --recovery-hidden-epochs 10) front=(--front 0.25)
      work=work/trec-standard-augment2-hid10 ;;
    *) echo "unknown run $name; pass trec-standard, rt-standard, boolq-standard, trec-standard-augment2(-hid10) or" \
         "rt-standard-steps540(-hid10)" >&2
       exit 2 ;;
  esac
  if [[ ! -d $work/teacher ]]; then
    echo "$work has no teacher: run bash bench/run_front.sh $name first" >&2; exit 2
  fi
  mkdir -p "bench/results/front/$name"
  for speedup in 10 19; do
    started=$SECONDS
    $COSTEFF compress --task-default --task "$task" --budget standard --work-dir "$work" ${extra[@]+"${extra[@]}"} \
      ${front[@]+"${front[@]}"} --target-speedup "$speedup" --out "work/front/$name-x$speedup"
    cp "work/front/$name-x$speedup/report.json" "bench/results/front/$name/target-speedup-$speedup.json"
    echo "$name --target-speedup $speedup: $((SECONDS - started)) s wall"
  done
done
