"""pytest-benchmark: each native kernel candidate against the torch op it replaces (group per op and shape).

Run: ``pytest bench/test_cpu_kernels.py --benchmark-only``. The speed-up table of record comes from
``bench/run_cpu.py`` (interleaved medians in one process); a kernel stays in ``csrc/`` only if it earns >= 1.2x.
"""

from __future__ import annotations

import pytest
from workloads import KERNEL_SHAPES, kernel_candidates

from costeff_fast import native

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernels could not be built here")

CANDIDATES = {shape: kernel_candidates(shape) for shape in KERNEL_SHAPES} if native.available() else {}


@pytest.mark.parametrize("path", ["torch", "native"])
@pytest.mark.parametrize("candidate", ["attention", "residual_layernorm", "linear_residual_layernorm", "embedding",
                                       "segment_mean", "compaction", "exit_decision", "compact",
                                       "encoder_layer"])
@pytest.mark.parametrize("shape", list(KERNEL_SHAPES))
def test_kernel(benchmark, shape, candidate, path):
    benchmark.group = f"{candidate} {shape}"
    fn = CANDIDATES[shape][candidate][path == "native"]
    benchmark.pedantic(fn, rounds=7, iterations=1, warmup_rounds=1)
