#!/usr/bin/env bash
# The student-TA gap (issue 31 item 3): one teacher and one TA per task at the quick budget, then students at 2 heads
# / FFN 160 (1/8 of MiniLM's encoder, the width of the 1/19-FLOPs target) that differ from the quick recipe in one
# lever each: more distillation steps between pruning events, the global (per-layer) width allocation, more
# hidden-state epochs in recovery, or recovery's exit distillation at another temperature. Each student gets its
# own work directory whose teacher and TA are hard links of the task's shared ones (work/<task>-quick-len64-mean,
# trained first when missing), so every lever starts from the same TA; the temperature levers also link the
# baseline's slenderized student and run recovery only. Writes bench/results/gap-levers/<name>/report.json.
# About 8-15 minutes per student on 2 cores (20 more for a task's teacher and TA).
# Usage: bench/run_gap_levers.sh [NAME...]   (default: all; NAME as in bench/results/gap-levers/)
set -euo pipefail
cd "$(dirname "$0")/.."
COSTEFF=${COSTEFF:-costeff-fast}
ONLY=" $* "
run() {  # run NAME TASK [--from BASELINE] [extra compress flags...]
  local name=$1 task=$2 from=""; shift 2
  if [[ ${1:-} == --from ]]; then from=$2; shift 2; fi
  if [[ "$ONLY" != "  " && "$ONLY" != *" $name "* ]]; then return; fi
  local shared=work/$task-quick-len64-mean work=work/gap/$name started=$SECONDS
  if [[ ! -f $shared/ta/stage.json ]]; then  # the task's teacher and TA, trained once (the quick budget's)
    $COSTEFF compress --task-default --task "$task" --budget quick --work-dir "$shared" --out "work/gap-out/$task-shared"
  fi
  mkdir -p "$work"
  for stage in teacher ta; do
    if [[ ! -e $work/$stage ]]; then cp -al "$shared/$stage" "$work/$stage"; fi
  done
  if [[ -n $from && ! -e $work/h2-f160-rfull-uniform/slender ]]; then  # the baseline's slenderized student
    mkdir -p "$work/h2-f160-rfull-uniform"
    cp -al "work/gap/$from/h2-f160-rfull-uniform/slender" "$work/h2-f160-rfull-uniform/slender"
  fi
  $COSTEFF compress --task-default --task "$task" --budget quick --work-dir "$work" --heads 2 --ffn 160 \
    --out "work/gap-out/$name" --overwrite "$@"
  mkdir -p "bench/results/gap-levers/$name"
  cp "work/gap-out/$name/report.json" "bench/results/gap-levers/$name/"
  echo "$name: $((SECONDS - started)) s wall (teacher and TA shared)"
}
for task in rt trec; do
  run "$task-quick-base" "$task"
  run "$task-quick-steps120" "$task" --distill-steps 120
  run "$task-quick-global" "$task" --allocation global
  run "$task-quick-hidden3" "$task" --recovery-hidden-epochs 3
  run "$task-quick-recoveryT2" "$task" --from "$task-quick-base" --recovery-temperature 2
  run "$task-quick-recoveryT4" "$task" --from "$task-quick-base" --recovery-temperature 4
  run "$task-quick-steps120-hidden3" "$task" --distill-steps 120 --recovery-hidden-epochs 3
done
# With a strong teacher: the task's standard-budget teacher (rt 0.8511; `bash bench/run_front.sh rt-standard` trains
# it) and the quick-budget TA distilled from it by `bash bench/run_more_data.sh rt-strong-quick` (work/rt-strong/ta,
# hard-linked here), so the student is that run's but for the lever. rt-strong-quick-steps360: three times the
# default 120 distillation steps after each pruning event (about 16 minutes more slenderization on 2 cores).
strong() {  # strong NAME TASK [extra compress flags...]
  local name=$1 task=$2 work=work/gap/$1 started=$SECONDS; shift 2
  if [[ "$ONLY" != "  " && "$ONLY" != *" $name "* ]]; then return; fi
  local teacher=work/$task-standard-len64-mean/teacher ta=work/$task-strong/ta
  if [[ ! -f $ta/stage.json ]]; then
    echo "run_gap_levers.sh: $name needs $ta: run bash bench/run_more_data.sh $task-strong-quick first" >&2
    exit 2
  fi
  mkdir -p "$work"
  if [[ ! -e $work/ta ]]; then cp -al "$ta" "$work/ta"; fi
  $COSTEFF compress --task "$task" --budget quick --teacher "$teacher" --work-dir "$work" --heads 2 --ffn 160 \
    --out "work/gap-out/$name" --overwrite "$@"
  mkdir -p "bench/results/gap-levers/$name"
  cp "work/gap-out/$name/report.json" "bench/results/gap-levers/$name/"
  echo "$name: $((SECONDS - started)) s wall (teacher and TA shared)"
}
strong rt-strong-quick-steps360 rt --distill-steps 360
