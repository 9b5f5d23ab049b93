"""Packaging: the wheel and sdist carry the native kernel sources, and a non-editable install builds and uses them;
one version, the license, every third-party import declared in setup.py, and the checkpoint format version.

The wheel is built from a copy of the repository (without VCS, virtual environments, build outputs and
checkpoints) so that a stale ``build/`` of the working tree cannot leak into it and nothing is written into the
checkout. It is built with ``--no-build-isolation``: the running environment already has setuptools (a torch
dependency), and CI then needs no download for it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import costeff_fast
from costeff_fast import native
from costeff_fast.checkpoint import CheckpointError, load_config
from costeff_fast.config import FORMAT_VERSION, CostEffConfig

REPO = Path(__file__).resolve().parent.parent
CSRC_FILES = sorted(p.name for p in (REPO / "csrc").iterdir() if p.suffix in {".cpp", ".h"})
NOT_COPIED = (
    ".git", ".venv", "venv", "shared", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".hypothesis", ".benchmarks", "work", "*.so", "*.safetensors", "*.whl",
)


def _run(args: list[str], cwd: Path) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    """A copy of the repository, plus a decoy ``work/`` package such as a training run leaves behind."""
    tree = tmp_path_factory.mktemp("source") / "costeff_fast_src"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(*NOT_COPIED))
    (tree / "work" / "run").mkdir(parents=True)
    (tree / "work" / "__init__.py").write_text("")
    (tree / "work" / "run" / "model.safetensors").write_bytes(b"\0")
    return tree


@pytest.fixture(scope="module")
def wheel(source_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-input", "-q",
          "-w", str(out)], cwd=source_tree)
    (built,) = out.glob("costeff_fast-*.whl")
    return built


def test_csrc_has_the_sources_native_builds():
    assert native.UNITY_SOURCE in CSRC_FILES and set(native.KERNELS) <= set(CSRC_FILES)
    assert any(name.endswith(".h") for name in CSRC_FILES)


def test_wheel_holds_the_packages_and_every_csrc_source_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"costeff_fast", wheel.name.split("-py")[0] + ".dist-info"}, top
    for name in names:
        assert not {"tests", "bench", "work", "build"} & set(name.split("/")[:-1]), name
        assert not name.endswith((".so", ".o", ".pyc", ".safetensors")), name
    assert sorted(n.removeprefix("costeff_fast/csrc/") for n in names if n.startswith("costeff_fast/csrc/")) \
        == CSRC_FILES
    for package, folder in (("costeff_fast", REPO / "costeff_fast"), ("costeff_fast/training", REPO / "training")):
        for module in folder.glob("*.py"):
            assert f"{package}/{module.name}" in names, module
    assert "costeff_fast/backends/__init__.py" in names


def test_sdist_carries_csrc(source_tree, tmp_path):
    """An sdist (PEP 517 ``build_sdist`` of the setuptools backend) has the top-level ``csrc/`` setup.py maps."""
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(tmp_path)!r})"],
         cwd=source_tree)
    (sdist,) = tmp_path.glob("costeff_fast-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {f"csrc/{name}" for name in CSRC_FILES} <= names
    assert {"setup.py", "README.md", "LICENSE", "training/__init__.py", "costeff_fast/native.py"} <= names


def test_checkout_uses_its_own_csrc():
    """Editable install or plain checkout on PYTHONPATH: no ``costeff_fast/csrc/``, so ``csrc/`` beside it."""
    assert not (Path(costeff_fast.__file__).resolve().parent / "csrc").exists()
    assert native.CSRC == REPO / "csrc"


def test_find_csrc_prefers_the_installed_package_then_the_checkout(monkeypatch, tmp_path):
    package = tmp_path / "site" / "costeff_fast"
    package.mkdir(parents=True)
    monkeypatch.setattr(native, "__file__", str(package / "native.py"))
    assert native._find_csrc() == package / "csrc"  # neither: the installed location, reported as missing
    (tmp_path / "site" / "csrc").mkdir()
    (tmp_path / "site" / "csrc" / native.UNITY_SOURCE).write_text("")
    assert native._find_csrc() == tmp_path / "site" / "csrc"
    (package / "csrc").mkdir()
    assert native._find_csrc() == tmp_path / "site" / "csrc"  # an empty folder is not the sources
    (package / "csrc" / native.UNITY_SOURCE).write_text("")
    assert native._find_csrc() == package / "csrc"


INSTALLED_CHECK = """
import json, sys
import torch
import costeff_fast
from costeff_fast import native
from costeff_fast.backends import select_backend

report = {"file": costeff_fast.__file__, "csrc": str(native.CSRC), "available": native.available(),
          "auto_on_cpu": select_backend("auto", "cpu")[0]}
if report["available"]:
    hidden = torch.randn(7, 5)
    cu_seqlens = torch.tensor([0, 3, 4, 7])
    expected = torch.stack([hidden[0:3].mean(0), hidden[3:4].mean(0), hidden[4:7].mean(0)])
    report["segment_mean_ok"] = bool(torch.allclose(native.segment_mean(hidden, cu_seqlens), expected, atol=1e-6))
json.dump(report, sys.stdout)
"""


@pytest.mark.skipif(not native.available(), reason="native kernels cannot be built here (no compiler or ninja)")
def test_installed_wheel_builds_and_uses_its_own_native_sources(wheel, tmp_path):
    target = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "-q", "--target", str(target),
          str(wheel)], cwd=tmp_path)
    installed_csrc = target / "costeff_fast" / "csrc"
    assert sorted(p.name for p in installed_csrc.iterdir() if p.is_file()) == CSRC_FILES
    extensions = tmp_path / "torch_extensions"  # a fresh build from the installed sources, not a cached one
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "COSTEFF_FAST"))}
    env.update(PYTHONPATH=str(target), TORCH_EXTENSIONS_DIR=str(extensions))
    # -s: no user site; PYTHONPATH comes before the environment's site-packages (torch, transformers and the
    # editable install's finder, which only answers what PYTHONPATH does not); cwd is outside the checkout.
    result = subprocess.run(
        [sys.executable, "-s", "-c", INSTALLED_CHECK], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert Path(report["file"]).resolve().is_relative_to(target.resolve()), report
    assert Path(report["csrc"]) == installed_csrc.resolve(), report
    assert report["available"] is True, result.stderr[-3000:]
    assert report["segment_mean_ok"] is True
    assert report["auto_on_cpu"] == "native", report
    (ninja,) = extensions.glob("*/build.ninja")
    assert str(installed_csrc.resolve() / native.UNITY_SOURCE) in ninja.read_text()
    assert str(REPO / "csrc") not in ninja.read_text()


# one version, the license ------------------------------------------------------------------------------------------


def test_wheel_carries_the_package_version_and_the_license(wheel):
    """setup.py reads ``costeff_fast.__version__`` (the one source ``costeff-fast --version`` prints)."""
    assert wheel.name.startswith(f"costeff_fast-{costeff_fast.__version__}-"), wheel.name
    archive = zipfile.ZipFile(wheel)
    (license_file,) = [name for name in archive.namelist() if ".dist-info/" in name and name.endswith("/LICENSE")]
    assert archive.read(license_file).decode() == (REPO / "LICENSE").read_text()
    metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert f"\nVersion: {costeff_fast.__version__}\n" in metadata and "Apache-2.0" in metadata


def test_license_is_the_apache_2_license_setup_py_declares():
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text and "END OF TERMS AND CONDITIONS" in text
    assert re.search(r'^\s*license="Apache-2.0",$', (REPO / "setup.py").read_text(), re.MULTILINE)
    assert not re.search(r"version=\"\d", (REPO / "setup.py").read_text()), "a second copy of the version"


# every third-party import is declared ------------------------------------------------------------------------------

#: import name -> distribution, where they differ (checked with the installed metadata too, when it is there)
DISTRIBUTIONS = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow", "cv2": "opencv-python",
                 "google": "protobuf", "attr": "attrs", "dateutil": "python-dateutil"}
SOURCES = (REPO / "costeff_fast", REPO / "training")  # training/ installs as costeff_fast.training


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions(setup_py: Path = REPO / "setup.py") -> set[str]:
    """Every distribution setup.py requires, in install_requires or any extra (normalized names)."""
    call = next(node for node in ast.walk(ast.parse(setup_py.read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup")
    keywords = {keyword.arg: keyword.value for keyword in call.keywords}
    requirements = list(ast.literal_eval(keywords["install_requires"]))
    for extra in ast.literal_eval(keywords["extras_require"]).values():
        requirements += extra
    return {_normalize(re.match(r"[A-Za-z0-9._-]+", requirement).group()) for requirement in requirements}


def third_party_imports(roots=SOURCES) -> dict[str, list[str]]:
    """Top-level module -> ``file:line`` of each absolute import outside the standard library and costeff_fast, in
    every module under ``roots`` (imports inside functions and ``try`` blocks included)."""
    found: dict[str, list[str]] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "costeff_fast":
                        found.setdefault(top, []).append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return found


def undeclared(imports: dict[str, list[str]], declared: set[str]) -> dict[str, list[str]]:
    """The imports whose distribution (by :data:`DISTRIBUTIONS`, the installed metadata, or its own name) setup.py
    does not declare."""
    installed = importlib.metadata.packages_distributions()
    missing = {}
    for module, places in imports.items():
        candidates = {module, DISTRIBUTIONS.get(module, module), *installed.get(module, [])}
        if not {_normalize(name) for name in candidates} & declared:
            missing[module] = places
    return missing


def test_every_third_party_import_is_declared_in_setup_py():
    imports = third_party_imports()
    assert {"torch", "transformers", "safetensors", "tokenizers", "numpy", "pyarrow", "datasets"} <= set(imports)
    assert not undeclared(imports, declared_distributions()), "imported but not in setup.py's install_requires or extras"


def test_the_import_check_catches_an_undeclared_import(tmp_path):
    package = tmp_path / "costeff_fast"
    (package / "sub").mkdir(parents=True)
    (package / "ok.py").write_text("import os\nimport torch.nn\nfrom . import sub\nfrom costeff_fast import config\n")
    (package / "sub" / "late.py").write_text("def f():\n    try:\n        import foo_undeclared\n    except ImportError:\n"
                                             "        from bar_undeclared.baz import q\n    import yaml\n")
    imports = third_party_imports([package])
    assert set(imports) == {"torch", "foo_undeclared", "bar_undeclared", "yaml"}
    assert imports["foo_undeclared"] == ["costeff_fast/sub/late.py:3"]
    declared = declared_distributions()
    assert set(undeclared(imports, declared)) == {"foo_undeclared", "bar_undeclared", "yaml"}
    assert set(undeclared(imports, declared | {"pyyaml"})) == {"foo_undeclared", "bar_undeclared"}  # yaml: pyyaml


# the checkpoint format version -------------------------------------------------------------------------------------


def _write_config(directory: Path, **changes) -> Path:
    config = CostEffConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, attention_head_size=8,
                           intermediate_size=32, vocab_size=50).to_dict()
    config.update(changes)
    config = {key: value for key, value in config.items() if value is not _DROP}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


_DROP = object()


def test_save_pretrained_writes_the_format_version(tmp_path):
    from conftest import make_tiny_model

    make_tiny_model().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["format_version"] == FORMAT_VERSION == 1
    assert load_config(tmp_path).format_version == FORMAT_VERSION


def test_a_config_without_format_version_loads_as_version_1(tmp_path):
    directory = _write_config(tmp_path / "old", format_version=_DROP)
    assert "format_version" not in json.loads((directory / "config.json").read_text())
    assert load_config(directory).format_version == 1


def test_a_newer_format_version_is_refused_naming_the_file_the_versions_and_the_fix(tmp_path):
    directory = _write_config(tmp_path / "new", format_version=FORMAT_VERSION + 1, hidden_size="changed meaning")
    with pytest.raises(CheckpointError) as refused:
        load_config(directory)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(str(directory / "config.json"))
    assert f"format_version {FORMAT_VERSION + 1}" in message and f"format_version {FORMAT_VERSION})" in message
    assert "upgrade costeff_fast" in message and "pip install --upgrade costeff_fast" in message
    with pytest.raises(ValueError, match="newer than this costeff_fast reads"):  # the Auto classes' way in too
        CostEffConfig(format_version=FORMAT_VERSION + 1)
    for bad in ("1", 0, True, 1.5):
        with pytest.raises(CheckpointError, match="format_version must be an integer >= 1"):
            load_config(_write_config(tmp_path / f"bad{bad!r}", format_version=bad))


def test_import_costeff_fast_leaves_datasets_out_until_data_is_used():
    """Inference alone (the GPU machine has no ``datasets``) never imports it; ``costeff_fast.data`` still works
    right after ``import costeff_fast``."""
    code = ("import sys, costeff_fast; assert 'datasets' not in sys.modules, 'imported'; "
            "costeff_fast.data.load_user_data; assert 'datasets' in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
