"""Configuration of a slenderized multi-exit BERT classifier (COST-EFF, Shen et al., EMNLP 2022)."""

from __future__ import annotations

from typing import Sequence

from transformers import PretrainedConfig

FORMAT_VERSION = 1
"""The checkpoint format this library writes and the newest it reads (``format_version`` in ``config.json``).

Raised when a checkpoint's layout changes so that an older costeff_fast would misread it; a ``config.json``
without the field (written before it existed) is version 1.
"""


def check_format_version(format_version) -> int:
    """``format_version`` of a config: an int from 1 to :data:`FORMAT_VERSION`.

    Raises:
        ValueError: a newer version (the message names it, the supported one and the fix: upgrade costeff_fast),
            or a value that is not an integer >= 1.
    """
    if not isinstance(format_version, int) or isinstance(format_version, bool) or format_version < 1:
        raise ValueError(f"format_version must be an integer >= 1, got {format_version!r}")
    if format_version > FORMAT_VERSION:
        raise ValueError(f"format_version {format_version} is newer than this costeff_fast reads (format_version "
                         f"{FORMAT_VERSION}); upgrade costeff_fast (pip install --upgrade costeff_fast, or pip "
                         "install . in a newer checkout)")
    return format_version


def _per_layer(name: str, value, num_layers: int, *, minimum: int) -> list[int]:
    """Broadcast an int to one value per layer, or check a per-layer list."""
    values = [value] * num_layers if isinstance(value, int) else list(value)
    if len(values) != num_layers:
        raise ValueError(
            f"{name} must be an int or a list of num_hidden_layers={num_layers} ints, got {len(values)} values"
        )
    for layer, width in enumerate(values):
        if not isinstance(width, int) or isinstance(width, bool) or width < minimum:
            raise ValueError(f"{name}[{layer}] must be an int >= {minimum}, got {width!r}")
    return values


def _check_thresholds(entropy_threshold, num_layers: int) -> list[float]:
    """One float per layer (nats) from a float or a sequence of ``num_layers`` floats, each >= 0 and finite.

    Raises:
        ValueError: a negative or non-finite threshold, or a list of the wrong length.
        TypeError: a value that is not a number.
    """
    if isinstance(entropy_threshold, (int, float)) and not isinstance(entropy_threshold, bool):
        values = [entropy_threshold] * num_layers
    elif isinstance(entropy_threshold, Sequence) and not isinstance(entropy_threshold, str):
        values = list(entropy_threshold)
        if len(values) != num_layers:
            raise ValueError(
                f"entropy_threshold must be a float or a list of num_hidden_layers={num_layers} floats, "
                f"got {len(values)} values"
            )
    else:
        raise TypeError(
            f"entropy_threshold must be None, a float or a list of floats, got {type(entropy_threshold).__name__}"
        )
    checked = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"entropy_threshold values must be floats, got {value!r}")
        if not value >= 0.0 or value == float("inf"):
            raise ValueError(f"entropy_threshold must be >= 0 and finite (nats), got {value}")
        checked.append(float(value))
    return checked


def resolve_entropy_threshold(entropy_threshold, config: "CostEffConfig") -> list[float]:
    """The early-exit rule of every entry point: the threshold a call runs with, one float per layer (nats).

    A row exits at the first layer l whose exit entropy is strictly below tau_l; the last layer always
    answers (docs/design.md, Threshold rule).

    Args:
        entropy_threshold: the caller's value: None (the checkpoint's calibrated ``config.entropy_threshold``,
            or 0.0 when the checkpoint has none), a float tau for every layer, or one float per layer.
            ``0.0`` means every row runs to the last layer (an entropy is never below 0).
        config: the model's :class:`CostEffConfig`.

    Returns:
        ``num_hidden_layers`` floats, each >= 0 and finite.

    Raises:
        ValueError: a negative or non-finite threshold, or a list of the wrong length.
        TypeError: a value that is not a number.
    """
    if entropy_threshold is None:
        entropy_threshold = 0.0 if config.entropy_threshold is None else config.entropy_threshold
    return _check_thresholds(entropy_threshold, config.num_hidden_layers)


class CostEffConfig(PretrainedConfig):
    r"""Configuration of :class:`~costeff_fast.modeling.CostEffForSequenceClassification`.

    A post-LayerNorm BERT encoder whose layers may each have their own width, with an exit classifier after
    every layer (COST-EFF, arXiv 2210.15523, Sec. 3). Names follow ``transformers.BertConfig``.

    Args:
        vocab_size, hidden_size, num_hidden_layers, hidden_act, hidden_dropout_prob,
        attention_probs_dropout_prob, max_position_embeddings, type_vocab_size, initializer_range,
        layer_norm_eps, pad_token_id: as in ``BertConfig``.
        num_attention_heads: heads per layer ``h_l`` (an int for all layers, or a list of
            ``num_hidden_layers`` ints >= 1).
        attention_head_size: ``d``, the width of every head (one value per model).
        intermediate_size: FFN width per layer ``F_l`` (int or list of ints >= 1).
        embedding_rank: ``r`` of the factorized word embedding ``E = A @ B`` (``A [vocab_size, r]``,
            ``B [r, hidden_size]``), or None for a plain embedding.
        exit_pooler: whether each exit has a BERT-style pooler (dense + tanh) before its classifier
            (a bool for all exits or one per exit). COST-EFF exits use ``tanh`` of the CLS vector only;
            a converted HF classifier keeps its pooler on the last exit so its logits are unchanged.
        classifier_dropout: dropout before every exit classifier (None: ``hidden_dropout_prob``).
        exit_pooling: what an exit without a pooler reads: ``"cls"`` (the [CLS] vector, COST-EFF) or
            ``"mean"`` (the mean of the row's token vectors). Exits with a BERT pooler always read [CLS].
            ``"mean"`` lets early exits work on encoders whose [CLS] carries little before the last layers
            (all-MiniLM-L6-v2, trained with mean pooling: its exits 1-3 stay at the majority class with
            ``"cls"``).
        exit_pooler_activation: what an exit with a pooler applies after it: ``"tanh"`` (BERT, RoBERTa,
            XLM-R), ``"relu"`` (DistilBERT's head) or ``"gelu"`` (ELECTRA's head).
        entropy_threshold: the calibrated early-exit threshold in nats (float or one per layer), used when a
            call passes none; None (not calibrated) means 0.0, every row runs to the last layer
            (:func:`resolve_entropy_threshold`).
        format_version: the checkpoint format (:data:`FORMAT_VERSION`, written into ``config.json``); a config
            without it is version 1, and a newer one than this library reads is refused.

    Raises:
        ValueError / TypeError: a size or width that is not an integer >= 1 (``vocab_size``, ``hidden_size``,
            ``num_hidden_layers``, ``attention_head_size``, ``max_position_embeddings``, ``type_vocab_size``, every
            per-layer width), a per-layer list of the wrong length, a ``layer_norm_eps`` that is not positive and
            finite, a bad threshold, a ``format_version`` newer than :data:`FORMAT_VERSION` (checked first: a newer
            format's other fields may mean something else).
    """

    model_type = "costeff"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int | list[int] = 12,
        attention_head_size: int = 64,
        intermediate_size: int | list[int] = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        embedding_rank: int | None = None,
        exit_pooler: bool | list[bool] = False,
        classifier_dropout: float | None = None,
        exit_pooling: str = "cls",
        exit_pooler_activation: str = "tanh",
        entropy_threshold: float | list[float] | None = None,
        format_version: int = FORMAT_VERSION,
        **kwargs,
    ):
        self.format_version = check_format_version(format_version)
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        for name, value in (("vocab_size", vocab_size), ("hidden_size", hidden_size),
                            ("num_hidden_layers", num_hidden_layers), ("attention_head_size", attention_head_size),
                            ("max_position_embeddings", max_position_embeddings),
                            ("type_vocab_size", type_vocab_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(layer_norm_eps, (int, float)) or not 0 < layer_norm_eps < float("inf"):
            raise ValueError(f"layer_norm_eps must be a positive finite number, got {layer_norm_eps!r}")
        if hidden_act != "gelu":
            raise ValueError(f"hidden_act must be 'gelu' (exact erf GELU as in BERT), got {hidden_act!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = _per_layer("num_attention_heads", num_attention_heads, num_hidden_layers, minimum=1)
        self.attention_head_size = attention_head_size
        self.intermediate_size = _per_layer("intermediate_size", intermediate_size, num_hidden_layers, minimum=1)
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        if embedding_rank is not None and not 1 <= embedding_rank <= hidden_size:
            raise ValueError(f"embedding_rank must be None or in [1, hidden_size={hidden_size}], got {embedding_rank}")
        self.embedding_rank = embedding_rank
        pooler = [exit_pooler] * num_hidden_layers if isinstance(exit_pooler, bool) else list(exit_pooler)
        if len(pooler) != num_hidden_layers or not all(isinstance(p, bool) for p in pooler):
            raise ValueError(f"exit_pooler must be a bool or a list of {num_hidden_layers} bools, got {exit_pooler!r}")
        self.exit_pooler = pooler
        self.classifier_dropout = classifier_dropout
        if exit_pooling not in ("cls", "mean"):
            raise ValueError(f"exit_pooling must be 'cls' or 'mean', got {exit_pooling!r}")
        self.exit_pooling = exit_pooling
        if exit_pooler_activation not in ("tanh", "relu", "gelu"):
            raise ValueError(
                f"exit_pooler_activation must be 'tanh', 'relu' or 'gelu', got {exit_pooler_activation!r}"
            )
        self.exit_pooler_activation = exit_pooler_activation
        if entropy_threshold is not None:
            _check_thresholds(entropy_threshold, num_hidden_layers)
        self.entropy_threshold = entropy_threshold

    @property
    def all_head_sizes(self) -> list[int]:
        """Per-layer attention width ``h_l * d``."""
        return [heads * self.attention_head_size for heads in self.num_attention_heads]
