"""bench/mutation.py's environment for mutant runs: isolated from other pytest sessions of the same user."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_mutation_script():
    spec = importlib.util.spec_from_file_location("bench_mutation", REPO / "bench" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mutant_runs_keep_pytests_temporary_folders_in_their_own_root(tmp_path):
    """pytest deletes all but the newest 3 ``pytest-N`` folders under its temporary root: the mutant runs must not
    share the root of a test session running beside them (that session's module fixtures lost their files)."""
    workdir = tmp_path / "costeff_mutation" / "predict" / "tree"
    env = load_mutation_script().environment(workdir)
    root = Path(env["PYTEST_DEBUG_TEMPROOT"])
    assert root.is_dir() and root.parent == workdir.parent
    # and pytest puts a session's tmp_path there
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "test_probe.py").write_text(
        "def test_where(tmp_path):\n    print('TMP=' + str(tmp_path))\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_probe.py"],
                         cwd=tmp_path / "probe", env=env, capture_output=True, text=True, check=True).stdout
    where = Path(next(line[4:] for line in out.splitlines() if line.startswith("TMP=")))
    assert root in where.parents


def test_resume_on_a_fresh_machine_rebuilds_the_tree_and_mutmuts_verdicts_from_the_summary(tmp_path):
    mutation = load_mutation_script()
    module = mutation.MODULES["losses"]
    meta = {"exit_code_by_key": {"costeff_fast.training.losses.x_f__mutmut_1": 1,
                                 "costeff_fast.training.losses.x_f__mutmut_2": None},
            "hash_by_function_name": {"f": "abc"}, "type_check_error_by_key": {}, "durations_by_key": {},
            "estimated_durations_by_key": {}}
    commit = mutation.git("rev-parse", "HEAD")
    out = tmp_path / "losses-after.json"
    out.write_text(json.dumps({"module": "losses", "commit": commit, "ref": "HEAD", "worktree": False,
                               "runs": [{"what": "all", "elapsed_s": 60, "stopped": True}], "mutmut_meta": meta}))
    workdir = tmp_path / "work" / "losses" / "tree"
    origin = mutation.restore_tree(workdir, module, out)
    assert origin["commit"] == commit and origin["runs"] == [{"what": "all", "elapsed_s": 60, "stopped": True}]
    source = workdir / mutation.tree_path(module["source"])
    assert source.read_bytes() == subprocess.run(["git", "show", f"{commit}:{module['source']}"], cwd=REPO,
                                                 capture_output=True, check=True).stdout
    assert json.loads((workdir / "mutants" / (mutation.tree_path(module["source"]) + ".meta")).read_text()) == meta
    assert json.loads((workdir / "origin.json").read_text())["module"] == "losses"


def test_resume_without_a_tree_or_a_summary_with_verdicts_says_what_to_do(tmp_path):
    mutation = load_mutation_script()
    module = mutation.MODULES["losses"]
    with pytest.raises(SystemExit, match="no earlier summary .* start the run without --resume"):
        mutation.restore_tree(tmp_path / "a", module, tmp_path / "missing.json")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"module": "losses", "commit": "x", "worktree": False}))
    with pytest.raises(SystemExit, match="predates the recorded verdicts"):
        mutation.restore_tree(tmp_path / "b", module, old)
