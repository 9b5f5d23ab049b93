"""costeff_fast: slenderized multi-exit BERT classifiers (COST-EFF) with batch-level early exit.

``import costeff_fast`` registers the ``costeff`` model type with the Hugging Face Auto classes: ``AutoConfig``,
``AutoModel`` (the trainable reference model, :class:`CostEffForSequenceClassification`) and
``AutoModelForSequenceClassification`` and ``pipeline`` (:class:`CostEffEngineForSequenceClassification`, the packed
early-exit engine, which :func:`from_pretrained` and :func:`optimize` return as well).

``costeff_fast.data`` (the built-in tasks and user data, on ``datasets`` and ``pandas``) is imported on first
access, so inference alone never imports ``datasets`` (PEP 562 module ``__getattr__``).
"""

import importlib

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .audit import AgreementAudit
from .config import CostEffConfig
from .inference import CostEffEngineForSequenceClassification, from_pretrained
from .modeling import CostEffClassifierOutput, CostEffForSequenceClassification
from .optimize import optimize
from .reference import exit_entropy

AutoConfig.register(CostEffConfig.model_type, CostEffConfig, exist_ok=True)
AutoModel.register(CostEffConfig, CostEffForSequenceClassification, exist_ok=True)
AutoModelForSequenceClassification.register(CostEffConfig, CostEffEngineForSequenceClassification, exist_ok=True)

__version__ = "0.1.0"


def __getattr__(name: str):
    """``costeff_fast.data`` on first access (see the module docstring)."""
    if name == "data":
        return importlib.import_module(f"{__name__}.data")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AgreementAudit",
    "CostEffClassifierOutput",
    "CostEffConfig",
    "CostEffEngineForSequenceClassification",
    "CostEffForSequenceClassification",
    "data",
    "exit_entropy",
    "from_pretrained",
    "optimize",
]
