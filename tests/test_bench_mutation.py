"""bench/mutation.py's environment for mutant runs: isolated from other pytest sessions of the same user."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

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
