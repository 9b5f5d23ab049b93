"""costeff_fast: slenderized multi-exit BERT classifiers (COST-EFF) with batch-level early exit.

``import costeff_fast`` registers the ``costeff`` model type with the Hugging Face Auto classes, so a
checkpoint loads with ``AutoConfig``, ``AutoModel`` (the reference model) and ``AutoModelForSequenceClassification``
and ``pipeline`` (:class:`CostEffEngineForSequenceClassification`: the packed early-exit engine in eval mode, the
reference forward in training mode).
"""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .config import CostEffConfig
from .hf_model import CostEffEngineForSequenceClassification
from .inference import CostEffInferenceModel, from_pretrained
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
    "CostEffInferenceModel",
    "exit_entropy",
    "from_pretrained",
    "optimize",
]
