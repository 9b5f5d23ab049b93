#!/usr/bin/env bash
# A front from one compress run (issue 31 item 1): the slenderization path to 2 heads / FFN 160 (1/8 of MiniLM's
# encoder) also stopped at 1/2 and 1/4, every point recovered and calibrated, and --max-drop 0.01 picking the
# cheapest (width, threshold) within one point of the teacher on the dev rows. At the demo budget the teacher and
# TA come from the caches `make demo` (rt, work/demo/) and the points ablation (trec, work/trec-demo/) fill;
# otherwise they train first. Writes bench/results/front/<name>/report.json and report.png.
# Usage: bench/run_front.sh [NAME...]   (default: all; NAME as in bench/results/front/, e.g. rt-demo)
set -euo pipefail
cd "$(dirname "$0")/.."
COSTEFF=${COSTEFF:-costeff-fast}
ONLY=" $* "
run() {  # run NAME TASK BUDGET WORK [--target-only] [extra compress flags...]
  local name=$1 task=$2 budget=$3 work=$4 front=(--front 0.5,0.25); shift 4
  if [[ "$ONLY" != "  " && "$ONLY" != *" $name "* ]]; then return; fi
  if [[ ${1:-} == --target-only ]]; then front=(); shift; fi  # the 2-head / FFN-160 target alone, no front
  local started=$SECONDS
  $COSTEFF compress --task-default --task "$task" --budget "$budget" --work-dir "$work" \
    ${front[@]+"${front[@]}"} --max-drop 0.01 --out "work/front/$name" "$@"
  mkdir -p "bench/results/front/$name"
  cp "work/front/$name/report.json" "work/front/$name/report.png" "bench/results/front/$name/"
  echo "$name: $((SECONDS - started)) s wall (cached stages reused)"
}
share() {  # share SOURCE_WORK_DIR DEST_WORK_DIR STAGE...: hard-link finished stages into another run's stage cache
  local source=$1 dest=$2 stage; shift 2
  for stage in "$@"; do
    if [[ ! -e "$dest/$stage" ]]; then
      # under a temporary name first, so an interrupted copy is never taken for a finished stage
      mkdir -p "$(dirname "$dest/$stage")"
      rm -rf "$dest/$stage.linking"
      cp -al "$source/$stage" "$dest/$stage.linking"
      mv "$dest/$stage.linking" "$dest/$stage"
    fi
  done
}
run rt-demo rt demo work/demo
run trec-demo trec demo work/trec-demo
run rt-quick rt quick work/rt-quick-len64-mean
run trec-quick trec quick work/trec-quick-len64-mean
# Runs of record for issue 31's targets: the standard budget, the default recipe (one command per task). Those run
# before 2026-12-08 recovered with 1 hidden-state epoch, the standard budget's default until then: their entries pin
# it, so each command reproduces its committed report (and reuses its cached stages). Each takes
# hours on 2 cores; every stage is cached under its work directory and a stage cut short resumes from its last
# progress save, so the same command continues an interrupted run.
run trec-standard trec standard work/trec-standard-len64-mean --recovery-hidden-epochs 1
run rt-standard rt standard work/rt-standard-len64-mean --recovery-hidden-epochs 1
# The trec run with 2 perturbed copies of every training row for the TA, slenderization and recovery (labelled by
# the teacher; the lever that lifted trec's 1/8 student by 2-3 points at the quick budget), and only the 1/4 point
# beside the target: the 1/2 point cannot reach 1/10 of the teacher's FLOPs, and skipping it saves a recovery.
# The teacher is the one trec-standard trains (same cache); the TA and later stages get their own (-aug2). Not
# run for rt: with rt's standard teacher the copies lowered the quick-budget student's late exits
# (bench/results/more-data/rt-strong-quick-augment2).
run trec-standard-augment2 trec standard work/trec-standard-len64-mean --augment 2 --front 0.25 \
  --recovery-hidden-epochs 1
# rt with three times the standard budget's 180 distillation steps after each pruning event (the lever that lifted
# the quick-budget student with rt's standard teacher by 1.0-1.1 points at exits 5-6: bench/results/gap-levers/
# rt-strong-quick-steps360), the target alone. Its own work directory (the stages after the teacher differ), whose
# teacher is a hard link of rt-standard's (when missing, rt-standard's whole front runs first: hours); the TA is
# the default recipe's, retrained here.
if [[ "$ONLY" == "  " || "$ONLY" == *" rt-standard-steps540 "* ]]; then
  if [[ ! -f work/rt-standard-len64-mean/teacher/stage.json ]]; then bash bench/run_front.sh rt-standard; fi
  share work/rt-standard-len64-mean work/rt-standard-steps540 teacher
fi
run rt-standard-steps540 rt standard work/rt-standard-steps540 --target-only --distill-steps 540 \
  --recovery-hidden-epochs 1
# The same 540-step student recovered with the paper's 10 epochs of hidden-state distillation instead of the
# standard 1 (the lever that lifted trec's standard 1/8 student by 0.3-0.9 points at exits 4-6: bench/results/
# README.md, "Variants at the standard budget"). Teacher, TA and slenderized model are hard links of
# rt-standard-steps540's (run that first), so only recovery and calibration run.
if [[ "$ONLY" == "  " || "$ONLY" == *" rt-standard-steps540-hid10 "* ]]; then
  if [[ ! -f work/rt-standard-steps540/h2-f160-rfull-uniform/slender/stage.json ]]; then
    bash bench/run_front.sh rt-standard-steps540
  fi
  share work/rt-standard-steps540 work/rt-standard-steps540-hid10 teacher ta h2-f160-rfull-uniform/slender
fi
run rt-standard-steps540-hid10 rt standard work/rt-standard-steps540-hid10 --target-only --distill-steps 540 \
  --recovery-hidden-epochs 10
# trec's augment2 front recovered with the paper's 10 hidden-state epochs (the lever that took rt-standard-steps540's
# student within one point at 1/13.7 of the teacher's FLOPs, out of sample). Teacher, TA and both slenderized points
# are hard links of trec-standard-augment2's (run that first), so only the extra rows, recovery and calibration run.
if [[ "$ONLY" == "  " || "$ONLY" == *" trec-standard-augment2-hid10 "* ]]; then
  points=work/trec-standard-len64-mean/h2-f160-rfull-uniform-front0.25-aug2
  if [[ ! -f $points/h2-f160/slender/stage.json ]]; then bash bench/run_front.sh trec-standard-augment2; fi
  share work/trec-standard-len64-mean work/trec-standard-augment2-hid10 teacher ta-aug2 \
    "${points#work/trec-standard-len64-mean/}/h3-f384/slender" "${points#work/trec-standard-len64-mean/}/h2-f160/slender"
fi
run trec-standard-augment2-hid10 trec standard work/trec-standard-augment2-hid10 --augment 2 --front 0.25 \
  --recovery-hidden-epochs 10
run boolq-standard boolq standard work/boolq-standard-len256-mean --max-length 256 --group-by-length
