"""costeff_fast: slenderized multi-exit BERT classifiers (COST-EFF) with batch-level early exit.

``import costeff_fast`` registers the ``costeff`` model type with the Hugging Face Auto classes: ``AutoConfig``,
``AutoModel`` (the trainable reference model, :class:`CostEffForSequenceClassification`) and
``AutoModelForSequenceClassification`` and ``pipeline`` (:class:`CostEffEngineForSequenceClassification`, the packed
early-exit engine, which :func:`from_pretrained` and :func:`optimize` return as well).
"""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from . import data
from .config import CostEffConfig
from .inference import CostEffEngineForSequenceClassification, from_pretrained
from .modeling import CostEffClassifierOutput, CostEffForSequenceClassification
from .optimize import optimize
from .reference import exit_entropy

AutoConfig.register(CostEffConfig.model_type, CostEffConfig, exist_ok=True)
AutoModel.register(CostEffConfig, CostEffForSequenceClassification, exist_ok=True)
AutoModelForSequenceClassification.register(CostEffConfig, CostEffEngineForSequenceClassification, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "CostEffClassifierOutput",
    "CostEffConfig",
    "CostEffEngineForSequenceClassification",
    "CostEffForSequenceClassification",
    "data",
    "exit_entropy",
    "from_pretrained",
    "optimize",
]
