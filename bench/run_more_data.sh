#!/usr/bin/env bash
# More rows for the students (issue 31 item 2), at the demo budget and equal executed FLOPs (2 heads, FFN 160, full
# embedding, as bench/results/points-ablation/<task>-demo-h2-f160-rfull): the same teacher and TA recipe, distilled
# on the 2,000 training rows plus (a) 4 perturbed copies of each (--augment 4) or (b) the task's other training rows
# given as unlabeled text (--unlabeled-file; never a validation row). Teacher caches as in run_points_ablation.sh.
# Writes bench/results/more-data/<name>/report.json. About 15 minutes per run on 2 cores.
# Usage: bench/run_more_data.sh [NAME...]   (default: all; NAME as in bench/results/more-data/)
set -euo pipefail
cd "$(dirname "$0")/.."
COSTEFF=${COSTEFF:-costeff-fast}
PYTHON=${PYTHON:-python}
ONLY=" $* "
unlabeled() {  # unlabeled TASK [BUDGET]: the task's training rows BUDGET (default demo) does not train on, as a CSV
  $PYTHON - "$1" "${2:-demo}" <<'PY'
import sys
import pandas as pd
from costeff_fast.data import cap_rows, load_task
from costeff_fast.training.budget import BUDGETS
task, budget = sys.argv[1], sys.argv[2]
splits = load_task(task, seed=0)
used = set(cap_rows(splits, max_train_rows=BUDGETS[budget].train_rows, seed=0)["train"]["text"])
rest = [text for text in splits["train"]["text"] if text not in used]
name = f"work/{task}-unlabeled.csv" if budget == "demo" else f"work/{task}-{budget}-unlabeled.csv"
pd.DataFrame({"text": rest}).to_csv(name, index=False)
print(f"{task}: {len(rest)} unlabeled rows in {name}")
PY
}
run() {  # run NAME TASK [extra compress flags...]
  local name=$1 task=$2; shift 2
  if [[ "$ONLY" != "  " && "$ONLY" != *" $name "* ]]; then return; fi
  local work=work/$task-demo started=$SECONDS
  if [[ $task == rt ]]; then work=work/demo; fi
  $COSTEFF compress --task-default --task "$task" --budget demo --work-dir "$work" --heads 2 --ffn 160 \
    --out "work/more-data/$name" "$@"
  mkdir -p "bench/results/more-data/$name"
  cp "work/more-data/$name/report.json" "bench/results/more-data/$name/"
  echo "$name: $((SECONDS - started)) s wall"
}
mkdir -p work
for task in rt trec; do
  run "$task-demo-augment4" "$task" --augment 4
  if [[ "$ONLY" == "  " || "$ONLY" == *" $task-demo-unlabeled "* ]]; then unlabeled "$task"; fi
  run "$task-demo-unlabeled" "$task" --unlabeled-file "work/$task-unlabeled.csv"
done
# A strong teacher: the task's standard-budget teacher (trec 0.9369, rt 0.8511; `bench/run_front.sh <task>-standard`
# trains it) distilled at the quick budget (3,000 training rows), as is, with --augment 2 and with the task's other
# training texts (trec 1,842, rt 8,476) as --unlabeled-file, and with --augment 2 for the TA only (--extra-rows-for
# ta: slenderization and recovery on the labelled rows; it reuses the augment2 run's TA). Same widths as above; each
# task has its own stage cache under work/<task>-strong. Names: trec-strong-quick, trec-strong-quick-augment2,
# trec-strong-quick-augment2-ta, trec-strong-quick-unlabeled and the same for rt (rt-strong-quick, ...).
strong() {  # strong TASK NAME [extra compress flags...]
  local task=$1 name=$2 started=$SECONDS; shift 2
  if [[ "$ONLY" != "  " && "$ONLY" != *" $name "* ]]; then return; fi
  local teacher=work/$task-standard-len64-mean/teacher
  if [[ ! -f $teacher/stage.json ]]; then
    echo "run_more_data.sh: $name needs $task's standard teacher: run bench/run_front.sh $task-standard first" >&2
    exit 2
  fi
  $COSTEFF compress --task "$task" --budget quick --teacher "$teacher" --heads 2 --ffn 160 \
    --work-dir "work/$task-strong" --out "work/more-data/$name" "$@"
  mkdir -p "bench/results/more-data/$name"
  cp "work/more-data/$name/report.json" "bench/results/more-data/$name/"
  echo "$name: $((SECONDS - started)) s wall"
}
for task in trec rt; do
  strong "$task" "$task-strong-quick"
  strong "$task" "$task-strong-quick-augment2" --augment 2
  strong "$task" "$task-strong-quick-augment2-ta" --augment 2 --extra-rows-for ta
  if [[ "$ONLY" == "  " || "$ONLY" == *" $task-strong-quick-unlabeled "* ]]; then unlabeled "$task" quick; fi
  strong "$task" "$task-strong-quick-unlabeled" --unlabeled-file "work/$task-quick-unlabeled.csv"
done
