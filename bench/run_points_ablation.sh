#!/usr/bin/env bash
# Where the points go (issue 31 item 0): the same teacher and TA at the demo budget, then students that differ in one
# thing: narrowed (2 heads, FFN 160) with the word embedding factorized to rank 128, 192, 256 or not, and the TA's
# own widths (12 heads, FFN 1536: no narrowing) with only the embedding factorized; and the default student with a
# geometric pruning schedule, or with its distillation steps spread by the share each event removes. Teacher and TA
# are cached per task (rt in work/demo/, the cache `make demo` fills; trec in work/trec-demo/) and shared by the
# students. About 3-4 minutes per student on 2 cores once they are cached.
# Usage: bench/run_points_ablation.sh [NAME...]   (default: all; NAME as in bench/results/points-ablation/)
set -euo pipefail
cd "$(dirname "$0")/.."
COSTEFF=${COSTEFF:-costeff-fast}
ONLY=" $* "
run() {  # run NAME TASK [extra compress flags...]
  local name=$1 task=$2; shift 2
  if [[ "$ONLY" != "  " && "$ONLY" != *" $name "* ]]; then return; fi
  local work=work/$task-demo
  if [[ $task == rt ]]; then work=work/demo; fi
  $COSTEFF compress --task-default --task "$task" --budget demo --work-dir "$work" \
    --out "work/ablate/$name" "$@"
  mkdir -p "bench/results/points-ablation/$name"
  cp "work/ablate/$name/report.json" "bench/results/points-ablation/$name/"
}
events() {  # events NAME TASK: the default student (full embedding) slenderized again in a cache of its own whose
  # teacher and TA are hard links to the task's, so its record has every pruning event's dev accuracy right after
  # the pruning and after its distillation steps (recorded since 2026-12-07; the seeded stage is otherwise the same)
  local name=$1 task=$2
  if [[ "$ONLY" != "  " && "$ONLY" != *" $name "* ]]; then return; fi
  local from=work/$task-demo
  if [[ $task == rt ]]; then from=work/demo; fi
  mkdir -p "work/$task-demo-events"
  for stage in teacher ta; do
    # absent there: this run trains its own
    if [[ ! -e "work/$task-demo-events/$stage" && -e "$from/$stage" ]]; then
      cp -al "$from/$stage" "work/$task-demo-events/$stage"
    fi
  done
  $COSTEFF compress --task-default --task "$task" --budget demo --work-dir "work/$task-demo-events" \
    --heads 2 --ffn 160 --out "work/ablate/$name"
  mkdir -p "bench/results/points-ablation/$name"
  cp "work/ablate/$name/report.json" "bench/results/points-ablation/$name/"
}
for task in rt trec; do
  run "$task-demo-h2-f160-rfull" "$task" --heads 2 --ffn 160
  run "$task-demo-h2-f160-r128" "$task" --heads 2 --ffn 160 --embedding-rank 128
  run "$task-demo-h12-f1536-r128" "$task" --heads 12 --ffn 1536 --embedding-rank 128
  run "$task-demo-h2-f160-r192" "$task" --heads 2 --ffn 160 --embedding-rank 192
  run "$task-demo-h2-f160-r256" "$task" --heads 2 --ffn 160 --embedding-rank 256
  events "$task-demo-h2-f160-rfull-events" "$task"
  # the events' record showed the last (linear) event doing most of the damage: the same share removed per event
  run "$task-demo-h2-f160-rfull-geometric" "$task" --heads 2 --ffn 160 --pruning-schedule geometric
  # or keep the linear schedule and give the last events more of the same total steps
  run "$task-demo-h2-f160-rfull-steps-by-share" "$task" --heads 2 --ffn 160 --event-steps by-share
done
