"""Drop-in speed-up for a Hugging Face encoder classifier (BERT, RoBERTa, XLM-R, DistilBERT, ELECTRA): the same
call, run by the packed, padding-free engine."""

from __future__ import annotations

import torch
import transformers
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .backends import check_quantize_target
from .inference import CostEffInferenceModel, check_num_threads
from .modeling import SUPPORTED_TEACHERS, CostEffForSequenceClassification

#: the ``transformers`` classifiers :func:`optimize` accepts (every classifier the conversion reproduces)
OPTIMIZABLE_CLASSIFIERS = tuple(name for name in SUPPORTED_TEACHERS if name.endswith("ForSequenceClassification"))


def _check_optimizable(model) -> None:
    """Raise unless ``model`` is an instance of one of :data:`OPTIMIZABLE_CLASSIFIERS`.

    Raises:
        TypeError: any other class (the message lists the supported ones).
    """
    if not isinstance(model, tuple(getattr(transformers, name) for name in OPTIMIZABLE_CLASSIFIERS)):
        raise TypeError(
            f"optimize expects one of {', '.join(OPTIMIZABLE_CLASSIFIERS)} (transformers), got {type(model).__name__}"
        )


class OptimizedBertForSequenceClassification:
    """A Hugging Face encoder classifier (one of :data:`OPTIMIZABLE_CLASSIFIERS`) converted for inference on the
    CPU in fp32, or with int8 GEMMs (``quantize="int8"``), by backend ``"auto"``
    (the native kernels when they build, else the torch reference path).

    The encoder weights are copied exactly (:meth:`CostEffForSequenceClassification.from_encoder_classifier`); the
    answer is the last layer's exit, which carries the source's pooler (RoBERTa: its head's dense) and
    classifier, so the logits equal the source's (with ``quantize="int8"``: up to the int8 rounding of the
    layers' GEMMs, see :func:`optimize`). No row exits early. Linear layers run on the real tokens only
    (no padding). RoBERTa/XLM-R positions count from each row's first token, as HF's do when no real token is the
    pad id.

    Args:
        model: the source classifier.
        quantize: None (fp32) or ``"int8"`` (as :func:`optimize`).
        num_threads: ``"auto"``, an int or None (as :func:`optimize`).

    Raises:
        TypeError: another class (the message lists the supported ones).
        ValueError: a source the conversion cannot reproduce (see ``from_encoder_classifier``); a bad ``quantize``.

    Attributes:
        config: the source model's config (``num_labels``, ``id2label`` ...).
        engine: the :class:`~costeff_fast.inference.CostEffInferenceModel` that runs the layers.
    """

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, model: nn.Module, quantize: str | None = None, num_threads: int | str | None = "auto"):
        _check_optimizable(model)
        check_quantize_target(quantize, "auto", "cpu")
        check_num_threads(num_threads)
        converted = CostEffForSequenceClassification.from_encoder_classifier(model).float().eval()
        self.config = model.config
        self.engine = CostEffInferenceModel(converted, tokenizer=None, backend="auto", device="cpu", quantize=quantize,
                                            num_threads=num_threads)

    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> SequenceClassifierOutput | tuple[torch.Tensor]:
        """Classify a right-padded batch, as the source classifier's ``forward`` does in eval mode.

        Args:
            input_ids: ``[B, S]`` int64 token ids (or a list of lists of ints, unpadded).
            attention_mask: ``[B, S]``, ones then zeros in each row (right padding); default all ones.
            token_type_ids: ``[B, S]`` segment ids; default zeros.
            return_dict: False returns the tuple ``(logits,)``.
            position_ids, inputs_embeds, labels, output_attentions, output_hidden_states: accepted for
                signature compatibility; only None/False is supported.

        Returns:
            ``SequenceClassifierOutput`` with ``logits [B, num_labels]`` fp32 on the CPU.

        Raises:
            ValueError: an unsupported argument, left padding, an empty row, ids outside the vocabulary or a
                row longer than ``max_position_embeddings``.
            TypeError: ``input_ids`` of the wrong type.
        """
        unsupported = {
            "position_ids": position_ids is not None,
            "inputs_embeds": inputs_embeds is not None,
            "labels": labels is not None,
            "output_attentions": bool(output_attentions),
            "output_hidden_states": bool(output_hidden_states),
        }
        for name, given in unsupported.items():
            if given:
                raise ValueError(
                    f"{name} is not supported by the optimized model (inference only, input_ids with right "
                    "padding); call the original Hugging Face model for it"
                )
        if input_ids is None:
            raise ValueError("input_ids is required")
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        logits = self.engine.generate_logits(batch)
        if return_dict is False:
            return (logits,)
        return SequenceClassifierOutput(logits=logits)

    def eval(self) -> "OptimizedBertForSequenceClassification":
        """Return self (the optimized model is always in inference mode)."""
        return self

    def to(self, *args, **kwargs) -> "OptimizedBertForSequenceClassification":
        """Return self for ``"cpu"`` and/or ``torch.float32`` (the only placement supported).

        Raises:
            ValueError: any other device or dtype.
        """
        for value in (*args, kwargs.get("device"), kwargs.get("dtype")):
            if value is None:
                continue
            if isinstance(value, torch.dtype):
                if value != torch.float32:
                    raise ValueError(f"the optimized model runs in torch.float32 only, got {value}")
            elif torch.device(value).type != "cpu":
                raise ValueError(f"the optimized model runs on the CPU only, got device {value!r}")
        return self

    def __repr__(self) -> str:
        config = self.config
        return (
            f"{type(self).__name__}(layers={config.num_hidden_layers}, hidden={config.hidden_size}, "
            f"heads={config.num_attention_heads}, num_labels={config.num_labels}, backend={self.engine.backend.name})"
        )


def optimize(model: nn.Module, quantize: str | None = None,
             num_threads: int | str | None = "auto") -> OptimizedBertForSequenceClassification:
    """Convert a Hugging Face encoder classifier to the packed, padding-free CPU engine.

    Args:
        model: a ``transformers`` ``BertForSequenceClassification`` (MiniLM included),
            ``RobertaForSequenceClassification``, ``XLMRobertaForSequenceClassification``,
            ``DistilBertForSequenceClassification`` (ReLU head) or ``ElectraForSequenceClassification`` (GELU
            head), any dtype; run in fp32 on the CPU.
        quantize: None (fp32) or ``"int8"``: each layer's QKV, attention-output and FFN weights stored int8 per
            output channel and run with dynamically quantized int8 activations (torch's fbgemm kernels;
            ``costeff_fast.from_pretrained(..., quantize="int8")`` describes it); the rest stays fp32.
        num_threads: torch threads of each call: ``"auto"`` (default) as many as other processes leave cores
            free (:mod:`costeff_fast.threads`), an int that many, None torch's current count; the previous count
            is restored after each call.

    Returns:
        An :class:`OptimizedBertForSequenceClassification` called like the source
        (``model(input_ids=..., attention_mask=..., token_type_ids=...)``) and returning
        ``SequenceClassifierOutput`` with the same predictions (logits within 1e-4 in fp32; with int8 they
        differ by its rounding).

    Raises:
        TypeError: ``model`` is none of those classes (the message lists them).
        ValueError: a source the conversion cannot reproduce exactly (e.g. a hidden activation other than
            the erf GELU); ``quantize`` other than None or ``"int8"``, or a bad ``num_threads`` (before
            converting anything).
    """
    return OptimizedBertForSequenceClassification(model, quantize=quantize, num_threads=num_threads)
