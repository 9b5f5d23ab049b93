"""Mutation testing of the core modules, on demand (issue 30 item 6; never in CI): how many small changes to the
code the tests notice.

The tool is mutmut 3 (``pip install "mutmut>=3.8,<4"`` into the venv; it is no requirement of the package). mutmut
copies the source folder into ``mutants/``, rewrites every function of the module under test into a trampoline
that runs the original or one mutant (an operator, a constant, a keyword argument changed...), runs the selected
tests once to learn which tests call which function, then runs, for each mutant, only the tests that reach its
function (``-x``: the first failure kills it). A mutant the tests still pass "survived".

So that neither the shared working tree nor other sessions' builds are touched, each run works in its own folder
(``--workdir``/<module>, default ``costeff_mutation/<module>`` in the system's temporary folder, outside the checkout so
that no pytest run there collects the mutated tree's tests): the sources are exported from a commit (``--ref``, default
``HEAD``; ``--worktree`` copies the working tree's files instead), ``training/`` goes to ``costeff_fast/training``
and ``csrc/`` to ``costeff_fast/csrc`` (the layout of an installed wheel, so the copy and not the editable install
is what the tests import), the native kernels build into the folder's own ``torch_extensions`` and pytest's
temporary folders go under its own ``pytest-temp`` (pytest deletes all but its newest 3, so a shared root would lose
the files of a test session running beside). Every process
runs at ``nice -n 19``, one torch thread per test process, ``--max-children`` at a time (default 2).

Per module the test selection is the fast tests that exercise it (:data:`MODULES`): no session-trained model
(``trained_rt``), no Triton interpreter, no training runs. The per-mutant timeout is mutmut's: a CPU-time limit of
``(the mutant's tests' clean time + --timeout-constant) * --timeout-multiplier * 2`` seconds and half that in wall
time (on a loaded machine a slow but correct run can time out: the summary lists the timed-out mutants).

Usage::

    .venv/bin/python bench/mutation.py losses reference      # one module after the other
    .venv/bin/python bench/mutation.py engine --ref <commit>
    .venv/bin/python bench/mutation.py losses --overlay tests/test_training_losses.py   # HEAD + an uncommitted test
    .venv/bin/python bench/mutation.py losses --worktree     # every file as the working tree has it

Ctrl-C or SIGTERM stops a run and still writes the summary: the mutants not reached count as "not checked" and
``--resume`` goes on with them, on this machine from the tree in ``--workdir``, on another (a fresh checkout) from the
summary itself, which carries mutmut's verdicts (``mutmut_meta``).

Writes ``bench/results/mutation/<module>.json`` (``<module>-<label>.json`` with ``--label``) per module: the commit, the tests and pytest arguments, the counts
(killed, survived, timeout, no tests, ...), the score ``(killed + timeout + segfault) / mutants checked`` and every
mutant not killed with its diff. ``bench/results/mutation/README.md`` reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import io
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: module -> its file in the checkout, its path in the mutation tree, and the pytest selection (files and options,
#: as one pytest command line would take them)
MODULES: dict[str, dict] = {
    "losses": {
        "source": "training/losses.py",
        "tests": ["tests/test_training_losses.py"],
    },
    "reference": {
        "source": "costeff_fast/reference.py",
        "tests": [
            "tests/test_engine.py", "tests/test_native.py", "tests/test_kernel_attention.py",
            "tests/test_kernel_compaction.py", "tests/test_kernel_exit_head.py", "tests/test_kernel_ffn.py",
            "tests/test_int8.py", "tests/test_modeling.py", "tests/test_mutation_gaps.py",
            "-k", "not triton and not run_of_record",
        ],
    },
    "engine": {
        "source": "costeff_fast/engine.py",
        "tests": ["tests/test_engine.py", "tests/test_native.py", "tests/test_stream.py", "tests/test_inference.py",
                  "tests/test_mutation_gaps.py", "-k", "not triton"],
    },
    "shards": {
        "source": "costeff_fast/jobs/shards.py",
        # the SIGKILL test (a 26 s subprocess run) is left out: it would be most of every surviving mutant's time
        "tests": ["tests/test_predict_job.py", "tests/test_predict_resume.py", "tests/test_predict_faults.py",
                  "tests/test_mutation_gaps_jobs.py", "-k", "not sigkill"],
    },
    "predict": {
        "source": "costeff_fast/jobs/predict.py",
        "tests": ["tests/test_predict_job.py", "tests/test_predict_resume.py", "tests/test_predict_faults.py",
                  "tests/test_predict_bad_input.py", "tests/test_predict_audit.py", "tests/test_cli.py",
                  "tests/test_mutation_gaps_predict.py", "-k", "predict and not sigkill"],
    },
}

#: folders of the checkout the mutation tree needs, and where each goes in it
TREE = {"costeff_fast": "costeff_fast", "training": "costeff_fast/training", "csrc": "costeff_fast/csrc",
        "tests": "tests"}

KILLED = ("killed", "timeout", "segfault")


def tree_path(source: str) -> str:
    """``training/losses.py`` -> ``costeff_fast/training/losses.py`` (the path in the mutation tree)."""
    for top, target in TREE.items():
        if source.startswith(top + "/"):
            return target + source[len(top):]
    raise ValueError(source)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def export_tree(destination: Path, ref: str | None, overlay: list[str]) -> dict:
    """The sources of ``ref`` (a commit) or of the working tree (``None``) in the mutation layout, with the working
    tree's copy of each file in ``overlay`` on top (e.g. a test file not committed yet)."""
    staging = destination / "staging"
    staging.mkdir(parents=True)
    if ref is not None:
        archive = subprocess.run(["git", "archive", "--format=tar", ref, *TREE], cwd=REPO, check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(staging, filter="data")
        origin = {"ref": ref, "commit": git("rev-parse", ref), "worktree": False}
    else:
        files = git("ls-files", "-co", "--exclude-standard", "--", *TREE).splitlines()
        for name in files:
            if (REPO / name).is_file():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, staging / name)
        dirty = git("status", "--porcelain", "--", *TREE)
        origin = {"ref": None, "commit": git("rev-parse", "HEAD"), "worktree": True,
                  "worktree_changes": dirty.splitlines()}
    for top, target in TREE.items():
        (destination / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging / top), str(destination / target))
    shutil.rmtree(staging)
    for name in overlay:
        shutil.copy2(REPO / name, destination / tree_path(name))
    if overlay:
        origin["overlay"] = sorted(overlay)
    return origin


def write_config(workdir: Path, module: dict, args) -> list[str]:
    # a test file the exported commit does not have yet (a "before" run) is left out of the selection
    selection = [arg for arg in module["tests"] if not arg.startswith("tests/") or (workdir / arg).is_file()]
    pytest_args = ["-p", "no:cacheprovider", "-p", "no:benchmark", "-W", "ignore::DeprecationWarning"]
    lines = [
        "[mutmut]",
        "source_paths = costeff_fast",
        f"only_mutate = {tree_path(module['source'])}",
        "pytest_add_cli_args_test_selection =\n" + "".join(f"    {arg}\n" for arg in selection).rstrip("\n"),
        "pytest_add_cli_args =\n" + "".join(f"    {arg}\n" for arg in pytest_args).rstrip("\n"),
        f"timeout_multiplier = {args.timeout_multiplier}",
        f"timeout_constant = {args.timeout_constant}",
        "process_isolation = forkserver",  # torch in the main process is not fork-safe
        "use_git_change_detection = false",
        "",
    ]
    (workdir / "setup.cfg").write_text("\n".join(lines))
    return pytest_args


def environment(workdir: Path) -> dict:
    env = dict(os.environ)
    temp_root = workdir.parent / "pytest-temp"
    temp_root.mkdir(parents=True, exist_ok=True)
    env.update({
        "TORCH_EXTENSIONS_DIR": str(workdir.parent / "torch_extensions"),  # not the shared ~/.cache build
        # pytest keeps only the newest 3 ``pytest-N`` folders under its temporary root and deletes the rest: the
        # hundreds of mutant runs would delete the folders of any other pytest session of this user (a CI run or
        # `make test` beside the mutation run lost its module fixtures' files that way), so they get their own root
        "PYTEST_DEBUG_TEMPROOT": str(temp_root),
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false", "PYTHONDONTWRITEBYTECODE": "1",
    })
    env.pop("PYTHONPATH", None)
    return env


def summarize(workdir: Path, name: str, module: dict, origin: dict, pytest_args: list[str], elapsed_s: float,
              args) -> dict:
    """Read mutmut's result files in ``workdir`` (its ``mutants/<path>.meta``) into the summary."""
    import mutmut
    from mutmut.configuration import reset_config
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    source = tree_path(module["source"])
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        reset_config()
        data = SourceFileMutationData(path=source)
        data.load()
        meta = json.loads(data.meta_path.read_text())
        counts: dict[str, int] = {}
        not_killed, timed_out = [], []
        for key, code in sorted(data.exit_code_by_key.items()):
            status = status_by_exit_code[code]
            counts[status] = counts.get(status, 0) + 1
            if status == "not checked":  # a stopped run: counted, and in mutmut_meta for --resume; no diff
                continue
            if status not in KILLED or status == "timeout":
                (timed_out if status == "timeout" else not_killed).append(
                    {"mutant": key, "status": status,
                     "diff": get_diff_for_mutant(key, path=source).replace(source, module["source"])})
    finally:
        os.chdir(previous)
    total = sum(counts.values())
    killed = sum(counts.get(status, 0) for status in KILLED)
    checked = total - counts.get("not checked", 0)
    return {
        "module": name,
        "source": module["source"],
        **origin,
        "tool": f"mutmut {mutmut.__version__}" if hasattr(mutmut, "__version__") else "mutmut",
        "tests": [arg for arg in module["tests"] if not arg.startswith("tests/") or (workdir / arg).is_file()],
        "pytest_args": pytest_args,
        "timeout": {"multiplier": args.timeout_multiplier, "constant_s": args.timeout_constant,
                    "rule": "CPU seconds > (clean time of the mutant's tests + constant) * multiplier * 2, "
                            "or wall seconds > half that"},
        "max_children": args.max_children,
        "cpu": platform.processor() or platform.machine(),
        "elapsed_s": round(elapsed_s),
        "counts": counts,
        "mutants": total,
        "checked": checked,  # fewer than mutants when a run was stopped (--resume goes on)
        "killed": killed,
        "survived": counts.get("survived", 0),
        # over the mutants checked: all of them once a run is complete (a stopped run's score so far)
        "score": round(killed / checked, 4) if checked else None,
        "not_killed": not_killed,
        "timed_out": timed_out,  # counted as killed; listed so a timeout caused by a slow machine can be told apart
        # mutmut's own record of the run (every mutant's exit code, None where not checked yet, and the hash of each
        # function it mutated): what --resume needs to go on from this file on another machine (see restore_tree)
        "mutmut_meta": meta,
    }


def rerun_names(workdir: Path, module: dict, which: str) -> list[str]:
    """The mutants of the last run in ``workdir`` that a new test or a longer timeout can change: every one not
    killed outright (``which="not-killed"``: survived, timed out, not checked) or only those that timed out or were
    not checked (``"timeouts"``). A rerun keeps the other verdicts: tests were only added."""
    from mutmut.stats import status_by_exit_code

    meta = json.loads((workdir / "mutants" / (tree_path(module["source"]) + ".meta")).read_text())
    keep = {"killed"} if which == "not-killed" else {"killed", "survived", "no tests", "segfault"}
    return sorted(key for key, code in meta["exit_code_by_key"].items() if status_by_exit_code[code] not in keep)


class Stopped(Exception):
    """SIGTERM, SIGHUP or Ctrl-C during a run: mutmut is stopped, the summary so far written, then the exit."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def stop_mutmut(process: subprocess.Popen, waits_s: tuple[float, float] = (60, 15)) -> None:
    """Stop mutmut and its forked test processes: SIGINT to mutmut alone first, which it answers by stopping its
    workers (a mutant cut short gets no verdict) and exiting with its verdicts saved; then SIGTERM and SIGKILL to the
    whole process group (mutmut's own: ``start_new_session``)."""
    for signum, wait_s in ((signal.SIGINT, waits_s[0]), (signal.SIGTERM, waits_s[1]), (signal.SIGKILL, None)):
        try:
            if signum == signal.SIGINT:
                process.send_signal(signum)
            else:
                os.killpg(process.pid, signum)
        except ProcessLookupError:  # already gone
            pass
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def restore_tree(workdir: Path, module: dict, out: Path) -> dict:
    """Rebuild the tree of the run recorded in ``out`` (a summary written by an earlier run, on this machine or
    another; ``--from``, by default the summary this run writes): the sources of its commit, the recorded overlay
    files as the working tree has them now, and mutmut's verdicts (``mutmut_meta``). mutmut keeps the verdict of
    every mutant whose function hashes the same, so the run goes on with the mutants not checked yet."""
    if not out.is_file():
        raise SystemExit(f"--resume: no tree in {workdir} and no earlier summary {out} to go on from; "
                         "name one with --from, or start the run without --resume")
    summary = json.loads(out.read_text())
    if "mutmut_meta" not in summary:
        raise SystemExit(f"--resume: {out} predates the recorded verdicts (no 'mutmut_meta'); start the run anew")
    shutil.rmtree(workdir, ignore_errors=True)  # a restore cut short: no origin.json there, so no verdicts either
    workdir.mkdir(parents=True)
    origin = export_tree(workdir, None if summary["worktree"] else summary["commit"], summary.get("overlay", []))
    if summary["worktree"]:
        print(f"[mutation] warning: {out} mutated a working tree; the working tree now stands in for it", flush=True)
    origin["runs"] = summary.get("runs", [])
    meta_path = workdir / "mutants" / (tree_path(module["source"]) + ".meta")
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(summary["mutmut_meta"]))
    (workdir / "origin.json").write_text(json.dumps({"module": summary["module"], **origin}))
    pending = sum(code is None for code in summary["mutmut_meta"]["exit_code_by_key"].values())
    print(f"[mutation] {summary['module']}: tree rebuilt from {out} ({pending} mutants not checked yet)", flush=True)
    return origin


def run_module(name: str, args) -> dict:
    module = MODULES[name]
    workdir = Path(args.workdir) / name / "tree"
    out = Path(args.results) / (f"{name}-{args.label}.json" if args.label else f"{name}.json")
    if not args.resume:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        origin = export_tree(workdir, None if args.worktree else args.ref, args.overlay)
        (workdir / "origin.json").write_text(json.dumps({"module": name, **origin}))
    else:
        if not (workdir / "origin.json").is_file():  # e.g. a fresh machine: go on from the committed summary
            if args.summary_only:
                raise SystemExit(f"--summary-only: no run in {workdir} (mutmut's mutated files are not kept in the "
                                 f"summary); run with --resume to go on with it here")
            restore_tree(workdir, module, Path(args.from_summary) if args.from_summary else out)
        origin = json.loads((workdir / "origin.json").read_text())
        origin.pop("module")
        for file in args.overlay:  # mutmut copies tests/ into mutants/ again on every run
            shutil.copy2(REPO / file, workdir / tree_path(file))
        origin["overlay"] = sorted(set(origin.get("overlay", [])) | set(args.overlay))
        if not origin["overlay"]:
            origin.pop("overlay")
    pytest_args = write_config(workdir, module, args)
    tests = [arg for arg in module["tests"] if not arg.startswith("tests/") or (workdir / arg).is_file()]
    env = environment(workdir)
    print(f"[mutation] {name}: {module['source']} at {origin['commit'][:10]}"
          f"{' + working tree' if origin['worktree'] else ''}{''.join(' + ' + f for f in origin.get('overlay', []))}"
          f", tests {' '.join(tests)}", flush=True)
    stopped = 0  # the signal that stopped the run, if one did
    if args.summary_only:  # the verdicts of the last run in workdir, e.g. after a change to this summary
        elapsed = json.loads(out.read_text())["elapsed_s"] if out.is_file() else float("nan")
    else:
        names = rerun_names(workdir, module, args.rerun) if args.rerun else []
        start = time.monotonic()
        with open(workdir / "mutmut.log", "a") as log:
            # its own process group, so that a stop reaches mutmut's forked test processes too
            process = subprocess.Popen(
                ["nice", "-n", "19", sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children),
                 *names], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            previous = {signum: signal.signal(signum, _raise_stopped) for signum in STOP_SIGNALS}
            try:
                returncode = process.wait()
            except Stopped as stop:  # stop mutmut, keep the verdicts so far, write the summary, then exit
                stopped = stop.signum
                stop_mutmut(process)
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        elapsed = time.monotonic() - start
        if not stopped and returncode != 0:
            raise SystemExit(f"mutmut failed ({returncode}): see {workdir / 'mutmut.log'}")
        origin.setdefault("runs", []).append({
            "what": f"rerun of {len(names)} mutants ({args.rerun})" if args.rerun else "all",
            "timeout_multiplier": args.timeout_multiplier, "timeout_constant_s": args.timeout_constant,
            "overlay": args.overlay, "elapsed_s": round(elapsed), **({"stopped": True} if stopped else {})})
        (workdir / "origin.json").write_text(json.dumps({"module": name, **origin}))
        elapsed = sum(run["elapsed_s"] for run in origin["runs"])
    summary = summarize(workdir, name, module, origin, pytest_args, elapsed, args)
    summary["label"] = args.label
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[mutation] {name}: {summary['killed']}/{summary['mutants']} killed (score {summary['score']}), "
          f"{summary['counts']}, {elapsed / 60:.1f} min -> {out}", flush=True)
    if stopped:  # 128 + the signal, as a shell reports a process it stopped
        print(f"[mutation] {name} stopped by {signal.Signals(stopped).name} after {summary['checked']} of "
              f"{summary['mutants']} mutants; --resume goes on", file=sys.stderr, flush=True)
        raise SystemExit(128 + stopped)
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="+", choices=sorted(MODULES))
    parser.add_argument("--ref", default="HEAD", help="commit whose sources are mutated (default HEAD)")
    parser.add_argument("--worktree", action="store_true", help="mutate the working tree's files instead of --ref")
    parser.add_argument("--overlay", action="append", default=[], metavar="FILE",
                        help="take this file (repeatable) from the working tree on top of --ref, e.g. a new test file")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "costeff_mutation"))
    parser.add_argument("--results", default=str(REPO / "bench" / "results" / "mutation"))
    parser.add_argument("--label", help="write <module>-<label>.json (e.g. before, after) instead of <module>.json")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--timeout-multiplier", type=float, default=5.0)
    parser.add_argument("--timeout-constant", type=float, default=30.0)  # per-mutant setup: fork, fixtures
    parser.add_argument("--resume", action="store_true",
                        help="reuse the tree (and mutmut's cached verdicts) of the last run instead of exporting anew; "
                             "where there is none (another machine), rebuild it from the run's summary JSON")
    parser.add_argument("--rerun", choices=["not-killed", "timeouts"],
                        help="reuse the last run's tree and run again only its mutants not killed outright "
                             "(survived, timed out: e.g. with a new test, --overlay) or only those that timed out "
                             "(e.g. with a longer --timeout-constant)")
    parser.add_argument("--from", dest="from_summary", metavar="SUMMARY",
                        help="with --resume where the tree is gone: the summary JSON to rebuild it from (default the "
                             "one this run writes, e.g. --label after --from bench/results/mutation/predict-before.json)")
    parser.add_argument("--summary-only", action="store_true",
                        help="only rewrite the JSON from the verdicts already in the workdir (implies --resume)")
    args = parser.parse_args(argv)
    args.resume = args.resume or args.summary_only or bool(args.rerun)
    for name in args.modules:
        run_module(name, args)


if __name__ == "__main__":
    main()
