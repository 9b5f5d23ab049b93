"""bench/mutation.py's environment for mutant runs: isolated from other pytest sessions of the same user."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
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


def test_a_stop_asks_mutmut_alone_first_then_ends_its_whole_process_group(tmp_path):
    """SIGINT to mutmut's own process (it saves its verdicts and stops its workers); a process group that outlives
    that is ended by SIGTERM, then SIGKILL."""
    mutation = load_mutation_script()
    said = tmp_path / "said"
    polite = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGINT, lambda *a: (open({str(said)!r}, 'w').write('SIGINT'), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n")], start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert polite.stdout.readline() == "ready\n"
    mutation.stop_mutmut(polite, waits_s=(10, 10))
    assert polite.returncode == 0 and said.read_text() == "SIGINT"
    # a main process that ignores SIGINT and SIGTERM, with a child of its own: the group is killed
    stubborn = subprocess.Popen([sys.executable, "-c", (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n")], start_new_session=True, stdout=subprocess.PIPE, text=True)
    child = int(stubborn.stdout.readline())
    mutation.stop_mutmut(stubborn, waits_s=(0.5, 0.5))
    assert stubborn.returncode == -signal.SIGKILL
    for _ in range(100):  # the orphaned child, killed with the group, is reaped by init
        if _gone(child):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the child {child} outlived the stop")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie: dead
    except FileNotFoundError:
        return True
