#!/usr/bin/env bash
# Bring-your-own-data run of record: the trec questions written out as a user's CSV files (columns question,
# question_type with string labels), then the packaged MiniLM fine-tuned and compressed on them through the CLI
# alone, then the checkpoint recalibrated on the validation file (within 3 points of the teacher, and 3x fewer
# FLOPs than full depth with per-layer thresholds). Writes bench/results/trec-user-csv/.
# Usage: bench/run_user_csv.sh   (about 25 minutes on 2 CPU cores; stages cached under work/user-csv/)
set -euo pipefail
cd "$(dirname "$0")/.."
COSTEFF=${COSTEFF:-costeff-fast}
PYTHON=${PYTHON:-python}
DIR=work/user-csv
RESULTS=bench/results/trec-user-csv
mkdir -p "$DIR" "$RESULTS"
"$PYTHON" - "$DIR" <<'PY'
import sys
from costeff_fast.data import load_task
splits = load_task("trec")
names = splits["train"].features["label"].names
for split, name in (("train", "train.csv"), ("validation", "validation.csv")):
    frame = splits[split].to_pandas()
    frame["question_type"] = [names[i] for i in frame["label"]]
    frame.rename(columns={"text": "question"})[["question", "question_type"]].to_csv(f"{sys.argv[1]}/{name}", index=False)
PY
$COSTEFF compress --task-default --train-file "$DIR/train.csv" --validation-file "$DIR/validation.csv" \
  --text-column question --label-column question_type --teacher-epochs 3 --ta-epochs 2 --recovery-epochs 2 \
  --work-dir "$DIR/stages" --out "$DIR/out" --overwrite
cp "$DIR/out/report.json" "$DIR/out/report.png" "$RESULTS/"
for goal in max-drop target-speedup; do
  rm -rf "$DIR/out-$goal" && cp -r "$DIR/out" "$DIR/out-$goal"
done
$COSTEFF calibrate --model "$DIR/out-max-drop" --validation-file "$DIR/validation.csv" --text-column question \
  --label-column question_type --teacher "$DIR/stages/teacher" --max-drop 0.03 --report-dir "$RESULTS/calibrate-max-drop"
$COSTEFF calibrate --model "$DIR/out-target-speedup" --validation-file "$DIR/validation.csv" --text-column question \
  --label-column question_type --target-speedup 3 --thresholds per-layer --report-dir "$RESULTS/calibrate-speedup"
