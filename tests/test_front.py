"""A front of widths from one compress run, and the goal (--max-drop / --target-speedup) as a contract over it
(issue 31 item 1)."""

from __future__ import annotations

import json

import pytest
from conftest import save_tiny_bert_teacher
from safetensors.torch import load_file

import costeff_fast
from costeff_fast import cli
from costeff_fast.training.budget import budget_with
from costeff_fast.training.front import encoder_fraction, goal_explanation, plan_front
from costeff_fast.training.pipeline import CompressionSettings, compress
from costeff_fast.training.validate import CompressArgumentError

MINILM = dict(hidden_size=384, head_size=32, teacher_heads=12, teacher_ffn=1536, teacher_rank=384)


def test_the_front_of_the_default_target_by_hand():
    """MiniLM (12 heads of 32, FFN 1536) to 2 heads / FFN 160 keeps (4*384*64 + 2*384*160) / (4*384*384 +
    2*384*1536) = 221184 / 1769472 = 1/8 of the encoder. Half: t = 0.5 / 0.875 = 4/7 of the way, heads
    12 - 40/7 = 6.29 -> 6, FFN (884736 - 4*384*6*32) / 768 = 768. A quarter: t = 6/7, heads 3.43 -> 3, FFN
    (442368 - 147456) / 768 = 384. Five events split 4/7, 2/7, 1/7 of the path: 2.86 -> 3, 1.43 -> 1, 0.71 -> 1."""
    points = plan_front(**MINILM, heads=2, ffn=160, embedding_rank=None, fractions=[0.25, 0.5], num_events=5)
    assert [(p.heads, p.ffn, p.events) for p in points] == [(6, 768, 3), (3, 384, 1), (2, 160, 1)]
    assert [p.fraction for p in points] == [0.5, 0.25, 0.125]
    assert [p.fraction_asked for p in points] == [0.5, 0.25, None]
    assert [p.name for p in points] == ["h6-f768", "h3-f384", "h2-f160"]
    default = plan_front(**MINILM, heads=2, ffn=160, embedding_rank=None, fractions=[0.5], num_events=None)
    assert [p.events for p in default] == [None, None]  # plan_events' default: one event per removed head
    ranked = plan_front(**MINILM, heads=2, ffn=160, embedding_rank=128, fractions=[0.5], num_events=None)
    assert [p.embedding_rank for p in ranked] == [384 - round(4 / 7 * 256), 128]  # 238, then the target
    assert encoder_fraction(384, 32, 12, 1536, 12, 1536) == 1.0


def test_the_why_names_the_margin_only_when_it_decided():
    """Teacher 0.80, max_drop 0.01 (goal 0.79), 100 GFLOPs for the teacher."""
    row = {"point": "h3-f384", "entropy_threshold": 0.5, "gflops": 10.0, "constraint_met": True}
    goal = {"max_drop": 0.01}
    plain = goal_explanation({**row, "accuracy": 0.795, "margin": {"margin": 0.0, "goal_met": True}}, goal, 0.80, 100.0)
    assert plain.startswith("the cheapest within 0.01 of the teacher's accuracy on the dev rows: width h3-f384")
    assert "10.0x fewer" in plain
    held = goal_explanation({**row, "accuracy": 0.795, "margin": {"margin": 0.005, "goal_met": True}}, goal, 0.80, 100.0)
    assert "keeping 0.50 points in hand (the smallest margin whose choice held" in held
    closest = goal_explanation({**row, "accuracy": 0.795, "margin": {"margin": 0.005, "goal_met": False}}, goal, 0.80,
                               100.0)
    assert "no margin held out of sample" in closest
    short = goal_explanation({**row, "accuracy": 0.792, "margin": {"margin": 0.005, "goal_met": True}}, goal, 0.80, 100.0)
    assert "nothing clears the goal by the margin of 0.50 points" in short and "most accurate is written" in short
    unmet = goal_explanation({**row, "accuracy": 0.78, "constraint_met": False, "margin": {"margin": 0.005}}, goal,
                             0.80, 100.0)
    assert unmet.startswith("goal NOT met") and "2.00 points below" in unmet


@pytest.mark.parametrize("fractions, message", [
    ([1.0], r"1 is not between the target's size \(0.1250 .*--heads 2 --ffn 160\) and 1"),
    ([0.1], r"0.1 is not between"),
    ([0.5, 0.5], "repeated"),
    ([0.5, 0.5001], "land on the same or crossing widths"),  # FFN 768 and 768.2 -> 768
    ([0.9999], "rounds to the teacher's own widths"),  # FFN 1535.8 -> 1536
])
def test_fractions_that_cannot_make_a_front_are_refused(fractions, message):
    with pytest.raises(ValueError, match=r"^--front .*" + message):
        plan_front(**MINILM, heads=2, ffn=160, embedding_rank=None, fractions=fractions, num_events=None)


def test_a_fraction_naming_the_target_adds_no_point():
    """MiniLM 12 heads / FFN 1536 to 2 heads / FFN 160: (4*384*64 + 2*384*160) / (4*384*384 + 2*384*1536) = 1/8,
    so 0.125 is the target itself, and so is 0.1252 (FFN 160.46 rounds to 160); 0.1254 (FFN 160.6 -> 161) is a point
    of its own."""
    plain = plan_front(**MINILM, heads=2, ffn=160, embedding_rank=None, fractions=[0.5, 0.25], num_events=None)
    for named in ([0.5, 0.25, 0.125], [0.125, 0.25, 0.5], [0.5, 0.25, 0.1252]):
        assert plan_front(**MINILM, heads=2, ffn=160, embedding_rank=None, fractions=named, num_events=None) == plain
    assert plan_front(**MINILM, heads=2, ffn=160, embedding_rank=None, fractions=[0.125], num_events=None) == plain[-1:]
    extra = plan_front(**MINILM, heads=2, ffn=160, embedding_rank=None, fractions=[0.5, 0.25, 0.1254], num_events=None)
    assert [p.name for p in extra] == [p.name for p in plain[:2]] + ["h2-f161", "h2-f160"]
    assert extra[2].fraction_asked == 0.1254
    with pytest.raises(ValueError, match=r"^--front 0.125,1: 1 is not between"):  # the fractions as given
        plan_front(**MINILM, heads=2, ffn=160, embedding_rank=None, fractions=[0.125, 1.0], num_events=None)


def test_the_why_says_whether_the_choice_holds_out_of_sample():
    """The same in-sample choice, with a cross-validated result that meets the goal and one that misses it:
    teacher 0.80, the held-out choice 0.785 with a paired standard error of 0.004, 4x fewer FLOPs."""
    row = {"point": "h3-f384", "entropy_threshold": 0.5, "gflops": 10.0, "constraint_met": True, "accuracy": 0.795,
           "margin": {"margin": 0.0, "goal_met": True}}
    held = {"method": "5-fold cross-validation", "accuracy": 0.785, "drop": 0.015, "drop_standard_error": 0.004,
            "speedup_flops": 4.0, "goal_met": False}
    missed = goal_explanation(row, {"max_drop": 0.01}, 0.80, 100.0, held)
    assert missed.startswith("the cheapest within 0.01 of the teacher's accuracy on the dev rows: width h3-f384")
    assert missed.endswith("Out of sample (5-fold cross-validation, each dev row scored by a choice made without "
                           "it): accuracy 0.7850, 1.50 ± 0.40 points under the teacher, 4.0x fewer executed FLOPs: "
                           "the goal does NOT hold there")
    kept = goal_explanation(row, {"max_drop": 0.02}, 0.80, 100.0, {**held, "goal_met": True})
    assert kept.endswith("the goal holds there") and "NOT" not in kept
    assert goal_explanation(row, {"max_drop": 0.01}, 0.80, 100.0) == missed.split(". Out of sample")[0]


@pytest.fixture(scope="module")
def front_run(tmp_path_factory, minilm_dir):
    """One compress with a front on a tiny 3-layer teacher (hidden 32, 4 heads of 8, FFN 64) and 256 rt rows: the
    target 1 head / FFN 16 keeps 1/4 of its encoder, the point at 0.6 lands on 2 heads / FFN 45."""
    root = tmp_path_factory.mktemp("front")
    teacher = save_tiny_bert_teacher(root / "teacher", minilm_dir, num_hidden_layers=3)
    budget = budget_with("quick", train_rows=256, eval_rows=128, max_length=32, ta_hidden_epochs=0.25,
                         ta_prediction_epochs=0.5, num_events=2, importance_batches=2, distill_steps=3,
                         recovery_hidden_epochs=0.25, recovery_prediction_epochs=0.5)
    settings = CompressionSettings(heads=1, ffn=16, front=(0.6,))
    report = compress("rt", root / "out", teacher_dir=teacher, settings=settings, budget=budget,
                      work_dir=root / "work", max_drop=0.02)
    return {"root": root, "teacher": teacher, "budget": budget, "settings": settings, "report": report}


def joined_sweep(report):
    return [row for point in report["front"]["points"] for row in point["sweep"]]


def test_every_point_is_recovered_calibrated_and_kept(front_run):
    report = front_run["report"]
    points = report["front"]["points"]
    assert [(p["heads"], p["ffn"]) for p in points] == [(2, 45), (1, 16)]
    for point in points:
        config = json.loads((front_run["root"] / "work" / "h1-f16-rfull-uniform-front0.6" / point["name"] / "recovered"
                             / "config.json").read_text())
        assert point["checkpoint"].endswith(f"{point['name']}/recovered")
        assert config["num_attention_heads"] == [point["heads"]] * 3 and config["intermediate_size"] == [point["ffn"]] * 3
        assert len(point["exit_accuracies"]) == 3 and point["sweep"][0]["entropy_threshold"] == 0.0
        assert all(row["point"] == point["name"] for row in point["sweep"])
        assert point["best_for_goal_out_of_sample"]["rows"] == report["validation_rows"]
    # the wider point costs more at full depth, on the same rows
    assert points[0]["sweep"][0]["gflops"] > points[1]["sweep"][0]["gflops"]
    assert "rerun the same compress command with --front-point NAME" in report["front"]["another_point"]
    # the written point's pruning events are its whole path from the TA: one segment per point up to it
    segments = [event["segment"] for event in report["slenderization_events"]]
    for event in report["slenderization_events"]:  # dev accuracy per exit right after pruning, then after the steps
        for key in ("before_distill", "after_distill"):
            assert len(event[key]["exit_accuracies"]) == 3 and all(0 <= a <= 1 for a in event[key]["exit_accuracies"])
    assert segments[0] == "h2-f45" and set(segments) <= {"h2-f45", "h1-f16"}
    assert [(e["heads"], e["ffn"]) for e in report["slenderization_events"]][-1] == (
        (2, 45) if report["front"]["chosen"] == "h2-f45" else (1, 16))


def test_max_drop_writes_the_cheapest_width_and_threshold_within_the_drop(front_run):
    report, root = front_run["report"], front_run["root"]
    teacher = report["accuracy"]["teacher"]
    rows = joined_sweep(report)
    within = [r for r in rows if r["accuracy"] >= teacher - 0.02 - 1e-12]
    chosen = report["calibration"]["chosen"]
    # the margin is the smallest candidate whose cross-validated choice met the goal (else the most accurate one)
    margin = chosen["margin"]
    met = [c["margin"] for c in margin["candidates"] if c["goal_met"]]
    assert margin["margin"] == (met[0] if met else max(margin["candidates"], key=lambda c: c["accuracy"])["margin"])
    clear = [r for r in rows if r["accuracy"] >= teacher - 0.02 + margin["margin"] - 1e-12]
    assert chosen["constraint_met"] is bool(within)
    if clear:
        assert chosen["gflops"] == min(r["gflops"] for r in clear) and "cheapest within 0.02" in chosen["why"]
        assert ("in hand" in chosen["why"]) is (margin["margin"] > 0)
    elif within:
        assert chosen["accuracy"] == max(r["accuracy"] for r in rows)
    else:
        assert chosen["accuracy"] == max(r["accuracy"] for r in rows) and "goal NOT met" in chosen["why"]
    assert report["front"]["chosen"] == chosen["point"]
    # --out holds the chosen point's weights and threshold
    point_dir = root / "work" / "h1-f16-rfull-uniform-front0.6" / chosen["point"] / "recovered"
    written, kept = load_file(root / "out" / "model.safetensors"), load_file(point_dir / "model.safetensors")
    assert written.keys() == kept.keys() and all((written[k] == kept[k]).all() for k in written)
    assert json.loads((root / "out" / "config.json").read_text())["entropy_threshold"] == chosen["entropy_threshold"]
    assert costeff_fast.from_pretrained(root / "out").config.num_attention_heads[0] == (2 if "h2" in chosen["point"] else 1)
    held = report["calibration"]["out_of_sample"]
    assert held["rows"] == report["validation_rows"] and report["accuracy"]["costeff_calibrated"] == held["accuracy"]
    assert held["margin"] == "auto" and all("margin" in fold for fold in held["per_fold"])


def test_another_goal_reuses_every_stage_and_says_when_it_is_not_met(front_run, tmp_path):
    """The same command with --target-speedup picks again from the cached points without training; a speed-up
    nothing reaches writes the cheapest pair and says so."""
    run = front_run
    teacher_gflops = run["report"]["flops_per_row"]["teacher_real_lengths"] / 1e9 * run["report"]["validation_rows"]
    rows = joined_sweep(run["report"])
    speedup = teacher_gflops / sorted(r["gflops"] for r in rows)[len(rows) // 2]  # half the rows are that cheap
    report = compress("rt", tmp_path / "fast", teacher_dir=run["teacher"], settings=run["settings"],
                      budget=run["budget"], work_dir=run["root"] / "work", target_speedup=speedup)
    assert report["stage_seconds"]["slenderization"] == run["report"]["stage_seconds"]["slenderization"]
    assert report["stage_seconds"]["recovery"] == run["report"]["stage_seconds"]["recovery"]
    fast = [r for r in rows if r["gflops"] <= teacher_gflops / speedup * (1 + 1e-9)]
    chosen = report["calibration"]["chosen"]
    assert chosen["constraint_met"] and chosen["accuracy"] == max(r["accuracy"] for r in fast)
    assert report["calibration"]["goal"] == {"target_speedup": speedup}
    unmet = compress("rt", tmp_path / "unmet", teacher_dir=run["teacher"], settings=run["settings"],
                     budget=run["budget"], work_dir=run["root"] / "work", target_speedup=1e6)
    chosen = unmet["calibration"]["chosen"]
    assert not chosen["constraint_met"] and chosen["gflops"] == min(r["gflops"] for r in rows)
    assert chosen["why"].startswith("goal NOT met: nothing runs 1e+06x fewer")


def test_front_point_writes_that_width_from_the_cached_stages(front_run, tmp_path):
    """--front-point names the width: the written weights are that point's, its threshold the goal's best among
    that point's own sweep only, and nothing trains again."""
    run = front_run
    for name in ("h2-f45", "h1-f16"):
        report = compress("rt", tmp_path / name, teacher_dir=run["teacher"], settings=run["settings"],
                          budget=run["budget"], work_dir=run["root"] / "work", max_drop=0.02, front_point=name)
        assert report["stage_seconds"]["slenderization"] == run["report"]["stage_seconds"]["slenderization"]
        assert report["stage_seconds"]["recovery"] == run["report"]["stage_seconds"]["recovery"]
        chosen = report["calibration"]["chosen"]
        assert chosen["point"] == name == report["front"]["chosen"]
        assert chosen["why"].startswith(f"--front-point {name} fixes the width; of its thresholds, ")
        own = next(p for p in run["report"]["front"]["points"] if p["name"] == name)
        assert chosen["entropy_threshold"] in [row["entropy_threshold"] for row in own["sweep"]]
        kept = load_file(run["root"] / "work" / "h1-f16-rfull-uniform-front0.6" / name / "recovered" / "model.safetensors")
        written = load_file(tmp_path / name / "model.safetensors")
        assert written.keys() == kept.keys() and all((written[k] == kept[k]).all() for k in written)
        # the cross-validated choice is made among this point's thresholds only
        assert {fold["point"] for fold in report["calibration"]["out_of_sample"]["per_fold"]} == {name}


def test_recovery_at_its_own_temperature_reuses_the_ta_and_slenderized_stages(front_run, tmp_path):
    """--recovery-temperature 2 in the same work directory: the TA and every slenderized point are reused (their
    records' seconds unchanged), each point is recovered again into its own recovered-T2 directory at temperature
    2, and the cached temperature-1 recoveries stay as they were."""
    run = front_run
    work = run["root"] / "work" / "h1-f16-rfull-uniform-front0.6"
    before = {d.name: json.loads((d / "recovered" / "stage.json").read_text()) for d in work.iterdir()}
    hotter = budget_with("quick", **{**{k: v for k, v in vars(run["budget"]).items() if k != "name"},
                                     "recovery_kd_temperature": 2.0})
    report = compress("rt", tmp_path / "hot", teacher_dir=run["teacher"], settings=run["settings"], budget=hotter,
                      work_dir=run["root"] / "work", max_drop=0.02)
    assert report["stage_seconds"]["teaching assistant"] == run["report"]["stage_seconds"]["teaching assistant"]
    assert report["stage_seconds"]["slenderization"] == run["report"]["stage_seconds"]["slenderization"]
    for name, record in before.items():
        assert json.loads((work / name / "recovered" / "stage.json").read_text()) == record
        assert record["params"]["temperature"] == 1.0
        assert json.loads((work / name / "recovered-T2" / "stage.json").read_text())["params"]["temperature"] == 2.0
    assert all(point["checkpoint"].endswith("recovered-T2") for point in report["front"]["points"])


def test_front_and_goal_refusals_come_before_any_training(tmp_path, minilm_dir):
    teacher = save_tiny_bert_teacher(tmp_path / "teacher", minilm_dir)
    with pytest.raises(CompressArgumentError, match=r"^--front 0.1: 0.1 is not between the target's size \(0.2500"):
        compress("rt", tmp_path / "out", teacher_dir=teacher, settings=CompressionSettings(heads=1, ffn=16, front=(0.1,)))
    with pytest.raises(CompressArgumentError, match="both given; pass one goal"):
        compress("rt", tmp_path / "out", teacher_dir=teacher, max_drop=0.01, target_speedup=2.0)
    with pytest.raises(CompressArgumentError, match=r"--target-speedup 0.5: must be >= 1"):
        compress("rt", tmp_path / "out", teacher_dir=teacher, target_speedup=0.5)
    with pytest.raises(CompressArgumentError, match=r"^--front-point h9-f1: not a point of this front \(h2-f45, "
                                                    r"h1-f16\); pass one of them$"):
        compress("rt", tmp_path / "out", teacher_dir=teacher, settings=CompressionSettings(heads=1, ffn=16, front=(0.6,)),
                 front_point="h9-f1", work_dir=tmp_path / "work")
    with pytest.raises(CompressArgumentError, match=r"^--front-point h2-f45: not a point of this front \(h1-f16\)"):
        compress("rt", tmp_path / "out", teacher_dir=teacher, settings=CompressionSettings(heads=1, ffn=16),
                 front_point="h2-f45", work_dir=tmp_path / "work")  # without --front the target is the only point
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_the_cli_takes_front_fractions_and_refuses_a_bad_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compress", "--task", "rt", "--task-default", "--out", "x", "--front", "0.5,half"])
    assert exit_info.value.code == 2 and "'half' is not a fraction; pass e.g. 0.5,0.25 or 1/2,1/4" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compress", "--task", "rt", "--task-default", "--out", "x", "--max-drop", "0.01",
                  "--target-speedup", "3"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
