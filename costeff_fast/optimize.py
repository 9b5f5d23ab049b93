"""Drop-in speed-up for a Hugging Face encoder classifier (BERT, RoBERTa, XLM-R, DistilBERT, ELECTRA): the same
call, run by the packed, padding-free engine."""

from __future__ import annotations

import transformers
from torch import nn

from .convert import SUPPORTED_TEACHERS, from_encoder_classifier
from .inference import DEFAULT_MAX_BATCH_TOKENS, CostEffEngineForSequenceClassification, check_engine_options

#: the ``transformers`` classifiers :func:`optimize` accepts (every classifier the conversion reproduces)
OPTIMIZABLE_CLASSIFIERS = tuple(name for name in SUPPORTED_TEACHERS if name.endswith("ForSequenceClassification"))


def optimize(model: nn.Module, tokenizer=None, quantize: str | None = None,
             num_threads: int | str | None = "auto") -> CostEffEngineForSequenceClassification:
    """Convert a Hugging Face encoder classifier to the packed, padding-free engine, as a drop-in model.

    The encoder weights are copied exactly (:func:`~costeff_fast.convert.from_encoder_classifier`, in fp32); the
    answer is the last layer's exit, which carries the source's pooler (RoBERTa: its head's dense) and classifier,
    so the logits equal the source's (with ``quantize="int8"``: up to the int8 rounding of the layers' GEMMs) and
    no row exits early. Linear layers run on the real tokens only. RoBERTa/XLM-R positions count from each row's
    first token, as Hugging Face's do when no real token is the pad id.

    The result is called like the source (``model(**tokenizer(texts, padding=True, return_tensors="pt"))``), enters
    ``pipeline("text-classification", model=optimize(m, tok), tokenizer=tok)``, and keeps the source's
    ``id2label``.

    Args:
        model: a ``transformers`` ``BertForSequenceClassification`` (MiniLM included),
            ``RobertaForSequenceClassification``, ``XLMRobertaForSequenceClassification``,
            ``DistilBertForSequenceClassification`` (ReLU head) or ``ElectraForSequenceClassification`` (GELU
            head), any dtype.
        tokenizer: the source's fast tokenizer, or None; with it the result also takes raw text
            (``generate_logits(["..."])``) and truncates over-long tokenized rows as the tokenizer would.
        quantize: None (fp32) or ``"int8"``: each layer's QKV, attention-output and FFN weights stored int8 per
            output channel and run with dynamically quantized int8 activations (CPU;
            :func:`costeff_fast.from_pretrained` describes it).
        num_threads: torch threads of each call: ``"auto"`` (default), an int or None
            (:func:`costeff_fast.from_pretrained`); torch's count is restored after each call.

    Returns:
        A :class:`~costeff_fast.inference.CostEffEngineForSequenceClassification` on the CPU, backend ``"auto"``.

    Raises:
        TypeError: ``model`` is none of those classes (the message lists them).
        ValueError: a source the conversion cannot reproduce exactly (e.g. a hidden activation other than the erf
            GELU); ``quantize`` other than None or ``"int8"``, or a bad ``num_threads`` (before converting anything).
    """
    if not isinstance(model, tuple(getattr(transformers, name) for name in OPTIMIZABLE_CLASSIFIERS)):
        raise TypeError(
            f"optimize expects one of {', '.join(OPTIMIZABLE_CLASSIFIERS)} (transformers), got {type(model).__name__}"
        )
    check_engine_options("auto", quantize, num_threads, DEFAULT_MAX_BATCH_TOKENS, "cpu")  # before converting
    converted = from_encoder_classifier(model).float().cpu().eval()
    return CostEffEngineForSequenceClassification.from_model(converted, tokenizer, device="cpu", quantize=quantize,
                                                             num_threads=num_threads)
