"""The native kernels build wherever a C++ compiler is present.

Without csrc the engine falls back to the torch path and ``test_native.py`` (and the native parametrizations in
conftest.py) skip, which is right on a user's machine without a compiler; this test keeps that fallback from hiding
a broken build on a machine that has one, such as CI's."""

from __future__ import annotations

import os
import shlex
import shutil
import sysconfig
from pathlib import Path

import pytest

from costeff_fast import native


def test_the_native_kernels_build_where_a_compiler_is_present():
    if os.environ.get(native.DISABLE_ENV) == "0":
        pytest.skip(f"native kernels disabled by {native.DISABLE_ENV}=0")
    compiler = shutil.which((shlex.split(os.environ.get("CXX", "")) or ["c++"])[0])
    if compiler is None:
        pytest.skip("no C++ compiler here: the torch path is the right fallback")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        pytest.skip("no Python headers here: the torch path is the right fallback")
    assert native.available(), f"csrc did not build with {compiler} present (the logged warning names the cause)"
