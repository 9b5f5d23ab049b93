"""Installs costeff_fast with its training pipeline (``training/`` as ``costeff_fast.training``).

The C++ sources of the native CPU kernels (top-level ``csrc/``) ship inside the package as the data package
``costeff_fast.csrc``, so a non-editable install (wheel, sdist) can still build the kernels at first use.

The version has one source, ``__version__`` in ``costeff_fast/__init__.py`` (read here as text: importing the
package needs torch); ``costeff-fast --version`` prints the same. Every third-party module the package imports is
a requirement below or in an extra (tests/test_packaging.py checks it).
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'^__version__ = "([^"]+)"$', (HERE / "costeff_fast" / "__init__.py").read_text(encoding="utf-8"),
                    re.MULTILINE).group(1)

setup(
    name="costeff_fast",
    version=VERSION,
    description="Slenderized multi-exit BERT classifiers (COST-EFF) with batch-level early exit on CPU and GPU",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=find_packages(include=["costeff_fast", "costeff_fast.*"]) + ["costeff_fast.training", "costeff_fast.csrc"],
    package_dir={"costeff_fast.training": "training", "costeff_fast.csrc": "csrc"},
    package_data={"costeff_fast.csrc": ["*.cpp", "*.h"]},
    install_requires=[
        "torch>=2.3,<3",
        "transformers>=4.46,<6",
        "tokenizers>=0.20,<1",
        "safetensors>=0.4.3",
        "datasets>=2.20,<6",
        "numpy>=1.24",
        "pyarrow>=15",  # costeff-fast predict's readers and shards (costeff_fast.jobs)
        "pandas>=1.5",  # costeff_fast.data: user files for compress and calibrate
        "tqdm>=4.66",
        "matplotlib>=3.7",
    ],
    extras_require={
        "gpu": ["triton>=3.0; platform_system == 'Linux'"],
        "ray": ["ray[data]>=2.40"],  # costeff-fast predict --engine ray, costeff_fast.integrations.ray
        # costeff-fast export --format onnx (torch.onnx.export's exporter needs onnx + onnxscript) and its check
        "onnx": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        # bench/: the ONNX Runtime peers (bench/peers.py) and the pytest-benchmark suite
        "bench": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18", "pytest-benchmark>=4"],
        "test": [
            "triton>=3.0; platform_system == 'Linux'",
            "ray[data]>=2.40",  # so tests/test_ray_integration.py runs on a local cluster instead of skipping
            "onnx>=1.16",  # with onnxscript and onnxruntime: tests/test_onnx_export.py runs instead of skipping
            "onnxscript>=0.2",
            "onnxruntime>=1.18",
            "pytest>=8",
            "pytest-benchmark>=4",
            "pytest-xdist>=3.8",  # make test: a worker per core, a file per unit (3.8: --no-loadscope-reorder)
            "hypothesis>=6.100",
            "ninja>=1.11",
        ],
    },
    entry_points={"console_scripts": ["costeff-fast=costeff_fast.cli:main"]},
)
