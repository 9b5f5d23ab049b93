"""Packaging: the wheel and sdist carry the native kernel sources, and a non-editable install builds and uses them.

The wheel is built from a copy of the repository (without VCS, virtual environments, build outputs and
checkpoints) so that a stale ``build/`` of the working tree cannot leak into it and nothing is written into the
checkout. It is built with ``--no-build-isolation``: the running environment already has setuptools (a torch
dependency), and CI then needs no download for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import costeff_fast
from costeff_fast import native

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
    assert {"setup.py", "README.md", "training/__init__.py", "costeff_fast/native.py"} <= names


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
