"""The front tables of bench/results/README.md from a compress report with a front (``--front``).

Usage (from the repository root)::

    python bench/front_table.py bench/results/front/trec-standard-augment2/report.json

One Markdown row per point of ``report.json``'s ``front``, for a run whose goal is ``--max-drop 0.01`` (one
point): its exits' accuracy on the dev rows; the point's own pair for the goal in sample (``best_for_goal``: the
cheapest threshold within the goal with compress's margin, else the closest, marked "not within the goal"), then
that choice scored out of sample (``best_for_goal_out_of_sample``: each dev row scored by a threshold chosen
without it); and the most accurate pair at no more than 1/10 and 1/19 of the teacher's executed FLOPs (real
lengths) in sample, the cheapest of equally accurate ones. The point compress wrote is in bold (its written pair,
chosen over all points with the whole front's margin, is in ``calibration.chosen``). Accuracy is a fraction of the
dev rows; ``Nx`` is the teacher's executed FLOPs over the pair's (``flops_per_row.teacher_real_lengths`` against
the sweep's ``gflops`` per row).

Reads only the report: nothing is run. Exits with a one-line error when the report has no front or another goal
(a ``--target-speedup`` report: its ``best_for_goal`` is not a one-point pair).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HEADER = ("| point | exits 1..6 | best pair for one point: in sample / its own choice cross-validated "
          "| best at <= 1/10 of the teacher's FLOPs (in sample) | best at <= 1/19 (in sample) |")


def speedup(setting: dict, rows: int, teacher_gflops_per_row: float) -> float:
    """The teacher's executed GFLOPs per row over ``setting``'s (a sweep entry: ``gflops`` summed over ``rows``)."""
    return teacher_gflops_per_row / (setting["gflops"] / rows)


def most_accurate_within(sweep: list[dict], rows: int, teacher_gflops_per_row: float, fraction: float):
    """The most accurate sweep entry at no more than ``fraction`` of the teacher's FLOPs (ties: fewer FLOPs)."""
    cheap = [s for s in sweep if speedup(s, rows, teacher_gflops_per_row) >= 1 / fraction]
    return max(cheap, key=lambda s: (s["accuracy"], -s["gflops"])) if cheap else None


def point_row(point: dict, report: dict, written: bool) -> str:
    rows = report["validation_rows"]
    teacher = report["accuracy"]["teacher"]
    teacher_gflops = report["flops_per_row"]["teacher_real_lengths"] / 1e9
    sweep = point["sweep"]

    def pair(setting, percent=False):
        if setting is None:
            return "none"
        share = f" ({100 * setting['accuracy'] / teacher:.1f} %)" if percent else ""
        return f"{setting['accuracy']:.4f}{share}, {speedup(setting, rows, teacher_gflops):.1f}x"

    chosen = point["best_for_goal"]
    in_sample = pair(chosen) + ("" if chosen["constraint_met"] else " (not within the goal)")
    held_out = point.get("best_for_goal_out_of_sample")
    out_of_sample = (f"{held_out['accuracy']:.4f}, {held_out['speedup_flops']:.1f}x" if held_out else "not recorded")
    name = f"{point['name']} (1/{round(1 / point['fraction'])})"
    if written:
        name = f"**{name}, written**"
    exits = " ".join(f"{accuracy:.3f}" for accuracy in point["exit_accuracies"])
    tenth = pair(most_accurate_within(sweep, rows, teacher_gflops, 1 / 10), percent=True)
    nineteenth = pair(most_accurate_within(sweep, rows, teacher_gflops, 1 / 19), percent=True)
    return f"| {name} | {exits} | {in_sample} / {out_of_sample} | {tenth} | {nineteenth} |"


def front_table(report: dict) -> str:
    """The Markdown table (header, rule and one row per front point) for a compress ``report.json``."""
    front = report.get("front")
    if not front:
        raise SystemExit("front_table.py: the report has no front: pass the report.json of a compress run with --front")
    goal = report.get("calibration", {}).get("goal")
    if goal != {"max_drop": 0.01}:
        raise SystemExit(f"front_table.py: the report's goal is {goal}, not --max-drop 0.01: pass the report.json of "
                         "the front's --max-drop 0.01 run")
    rows = [HEADER, "|---|---|---|---|---|"]
    rows += [point_row(point, report, point["name"] == front["chosen"]) for point in front["points"]]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="report.json of a compress run with --front")
    report = json.loads(parser.parse_args().report.read_text())
    print(front_table(report))


if __name__ == "__main__":
    main()
