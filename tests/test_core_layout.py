"""The core's shape: imports flow one way, the threshold rule, and the backend table with its selection."""

from __future__ import annotations

import ast
import logging
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model, random_batch

import costeff_fast
from costeff_fast import CostEffConfig, native
from costeff_fast.backends import NativeBackend, build_backend, select_backend
from costeff_fast.config import resolve_entropy_threshold

PACKAGE = Path(costeff_fast.__file__).resolve().parent

#: module -> its floor; a module may import costeff_fast modules on its own floor or below only
FLOORS = {
    "batch": 0, "transfer": 0, "packing": 0, "config": 0, "threads": 0, "native": 0, "kernels": 0,
    "reference": 1,
    "modeling": 2, "checkpoint": 2,
    "convert": 3, "backends": 3, "inputs": 3,
    "engine": 4,
    "inference": 5, "flops": 5, "data": 5,
    "optimize": 6, "export": 6, "audit": 6,
    "jobs": 6, "integrations": 6,
    "cli": 7, "commands": 7, "__init__": 7,
}
LEAVES = ("native", "kernels")  # import nothing from the rest of the package
#: module -> costeff_fast modules it never imports, whatever the floors allow: the engine runs converted models
#: and never reads a Hugging Face teacher, and the trainable model knows no teacher family (conversion imports it)
NEVER = {"engine": {"convert"}, "backends": {"convert"}, "kernels": {"convert"}, "modeling": {"convert"}}
#: the one import allowed inside a function: the triton backend imports triton, an optional dependency
OPTIONAL = {"triton_backend"}


def _module_imports(path: Path) -> tuple[set[str], list[str]]:
    """Top-level costeff_fast modules imported by ``path`` and those imported inside a function."""
    tree = ast.parse(path.read_text())
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    found, nested = set(), []
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inside = {id(inner) for fn in functions for inner in ast.walk(fn) if inner is not fn}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = list(parts[: len(parts) - node.level])
                target = base + (node.module.split(".") if node.module else [])
                names = [target[0]] if target else [alias.name for alias in node.names]
            elif node.module and node.module.startswith("costeff_fast."):
                names = [node.module.split(".")[1]]
            elif node.module == "costeff_fast":  # a module of the package, or a name from its root
                names = [alias.name if alias.name in FLOORS else "__init__" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] if "." in a.name else "__init__"
                     for a in node.names if a.name.split(".")[0] == "costeff_fast"]
        names = [name for name in names if name in FLOORS and name != "training"]
        found.update(names)
        optional = isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] in OPTIONAL
        if names and id(node) in inside and not optional:
            nested.append(f"{path.name}:{node.lineno}")
    return found, nested


def _floor(path: Path) -> tuple[str, int]:
    top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    return top, FLOORS[top]


def _never_imported(path: Path) -> set[str]:
    """The modules of :data:`NEVER` that ``path`` imports (empty when it keeps the rule)."""
    top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    return _module_imports(path)[0] & NEVER.get(top, set())


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py") if "training" not in p.parts),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path):
    top, floor = _floor(path)
    imported, nested = _module_imports(path)
    assert not nested, f"costeff_fast imports hidden inside functions: {nested}"
    assert not _never_imported(path), f"{path.name} imports {sorted(_never_imported(path))}, which {top} never may"
    for name in imported - {top}:
        assert FLOORS[name] <= floor, f"{path.name} (floor {floor}) imports {name} (floor {FLOORS[name]})"
        if top in LEAVES:
            pytest.fail(f"{path.name} is a leaf but imports costeff_fast.{name}")


@pytest.mark.parametrize("source", ["from .convert import from_bert", "from . import convert",
                                    "import costeff_fast.convert", "from costeff_fast.convert import from_bert",
                                    "from costeff_fast import convert"])
@pytest.mark.parametrize("where", ["engine.py", "modeling.py", "backends/torch_backend.py", "kernels/attention.py"])
def test_the_never_rule_catches_an_import_of_convert(tmp_path, monkeypatch, where, source):
    """The rule can fail: each spelling of an import of convert, written where it is barred, is caught."""
    if "/" in where:  # one package down: the relative import climbs one more level
        source = source.replace("from .", "from ..")
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{source}\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path)
    assert _never_imported(path) == {"convert"}
    allowed = tmp_path / "optimize.py"
    allowed.write_text(f"{source.replace('from ..', 'from .')}\n")
    assert not _never_imported(allowed)


def test_every_module_has_a_floor():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.glob("*")
            if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert tops - {"training"} <= set(FLOORS), tops - set(FLOORS)


def test_threshold_rule():
    config = CostEffConfig(num_hidden_layers=3, entropy_threshold=0.4)
    assert resolve_entropy_threshold(None, config) == [0.4, 0.4, 0.4]  # None: the checkpoint's
    assert resolve_entropy_threshold(0.0, config) == [0.0, 0.0, 0.0]  # 0.0: full depth, not the checkpoint's
    assert resolve_entropy_threshold([0.1, 0.2, 0.3], config) == [0.1, 0.2, 0.3]
    uncalibrated = CostEffConfig(num_hidden_layers=2)
    assert resolve_entropy_threshold(None, uncalibrated) == [0.0, 0.0]
    with pytest.raises(ValueError, match="num_hidden_layers=3"):
        resolve_entropy_threshold([0.1, 0.2], config)
    with pytest.raises(ValueError, match=">= 0 and finite"):
        resolve_entropy_threshold(-1.0, config)
    with pytest.raises(TypeError, match="floats"):
        resolve_entropy_threshold([0.1, "a", 0.3], config)


def test_checkpoint_threshold_is_used_by_every_entry_point():
    """generate_logits, the stream and the reference model resolve None the same way."""
    batch = random_batch(7, batch=12, vocab=97)
    model = make_tiny_model(entropy_threshold=1e9)  # every row is confident at exit 1
    engine = costeff_fast.CostEffEngineForSequenceClassification.from_model(model, None, backend="torch")
    assert engine.generate_logits(batch, return_exit_layers=True)[1].tolist() == [1] * 12
    ids = [row[: int(n)].tolist() for row, n in zip(batch["input_ids"], batch["attention_mask"].sum(1))]
    engine.tokenizer = lambda texts, *args, **kwargs: {"input_ids": [ids[int(t)] for t in texts]}
    streamed = list(engine.generate_logits_stream([str(i) for i in range(12)], batch_size=5))
    assert sorted(index for index, _, _ in streamed) == list(range(12))
    assert {layer for _, _, layer in streamed} == {1}
    assert model.early_exit_reference(**batch)[1].tolist() == [1] * 12
    assert model(**batch).exit_layer.tolist() == [1] * 12
    overridden = costeff_fast.CostEffEngineForSequenceClassification.from_model(model, None, backend="torch", entropy_threshold=0.0)
    assert overridden.generate_logits(batch, return_exit_layers=True)[1].tolist() == [4] * 12
    assert overridden.entropy_threshold == [0.0] * 4 and model.config.entropy_threshold == 1e9


@pytest.mark.skipif(not native.available(), reason="native kernels could not be built here")
def test_auto_picks_native_on_the_cpu_and_logs_why(tiny_model, caplog):
    assert select_backend("auto", "cpu")[0] == "native"
    with caplog.at_level(logging.INFO, logger="costeff_fast.backends"):
        backend = build_backend(tiny_model, "auto", "cpu")
    assert backend.name == "native"
    assert [r.getMessage() for r in caplog.records] == ["costeff_fast: backend 'native' (CPU and the native kernels are built)"]


def test_auto_on_a_gpu_machine_without_triton_runs_the_cpu_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(costeff_fast.backends.importlib.util, "find_spec", lambda name: None)
    assert select_backend("auto") == select_backend("auto", "cpu")
    assert select_backend("auto", "cuda")[0] == "torch"


def test_auto_without_native_kernels_picks_torch(tiny_model, monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)
    name, reason = select_backend("auto", "cpu")
    assert name == "torch" and native.DISABLE_ENV in reason
    assert build_backend(tiny_model, "auto", "cpu").name == "torch"
    with pytest.raises(RuntimeError, match="native CPU kernels are unavailable"):
        build_backend(tiny_model, "native", "cpu")


def test_native_is_cpu_only_and_unknown_names_are_refused(tiny_model):
    with pytest.raises(ValueError, match="backend must be one of"):
        select_backend("fast")
    with pytest.raises(ValueError, match="runs on the CPU"):
        build_backend(tiny_model, "native", "meta")
    with pytest.raises(RuntimeError, match="fp32 weights on the CPU"):
        NativeBackend(build_backend(tiny_model, "torch").weights, "meta")


@pytest.mark.skipif(not native.available(), reason="native kernels could not be built here")
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_from_pretrained_takes_a_backend_name(tmp_path, backend):
    model = make_tiny_model()
    model.save_pretrained(tmp_path)
    loaded = costeff_fast.from_pretrained(tmp_path, backend=backend)
    assert loaded.backend.name == backend
    batch = random_batch(3, batch=5, vocab=97)
    with torch.no_grad():
        expected = model(**batch, entropy_threshold=0.0).logits
    torch.testing.assert_close(loaded.generate_logits(batch, entropy_threshold=0.0), expected, atol=1e-5, rtol=0)
