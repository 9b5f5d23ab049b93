"""Teacher conversion: a Hugging Face encoder classifier becomes a multi-exit COST-EFF model, one reader per family.

Each reader maps one family's configuration and weights onto
:class:`~costeff_fast.modeling.CostEffForSequenceClassification` exactly (the same hidden states and, with a head,
the same logits); :func:`from_encoder_classifier` dispatches on the source's class and builds the model.
Sources: the target model is COST-EFF's (Shen et al., EMNLP 2022, arXiv 2210.15523), Sec. 3; the source layouts
are those of ``transformers.models.bert.modeling_bert``, ``modeling_roberta``,
``modeling_xlm_roberta``, ``modeling_distilbert`` and ``modeling_electra``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    BertModel,
    DistilBertForSequenceClassification,
    DistilBertModel,
    ElectraForSequenceClassification,
    ElectraModel,
    RobertaForSequenceClassification,
    RobertaModel,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

from .config import CostEffConfig
from .modeling import CostEffForSequenceClassification

#: the Hugging Face classes :func:`from_encoder_classifier` converts, classifiers first (``transformers`` class
#: names; each family's bare encoder converts too)
SUPPORTED_TEACHERS = (
    "BertForSequenceClassification",
    "RobertaForSequenceClassification",
    "XLMRobertaForSequenceClassification",
    "DistilBertForSequenceClassification",
    "ElectraForSequenceClassification",
    "BertModel",
    "RobertaModel",
    "XLMRobertaModel",
    "DistilBertModel",
    "ElectraModel",
)


def from_encoder_classifier(
    model, num_labels: int | None = None, **config_overrides
) -> CostEffForSequenceClassification:
    """Convert a Hugging Face encoder (classifier) into a full-width multi-exit model, copying its weights exactly.

    Supported (``transformers`` classes; :data:`SUPPORTED_TEACHERS`): ``BertForSequenceClassification``
    (MiniLM included), ``RobertaForSequenceClassification``, ``XLMRobertaForSequenceClassification``,
    ``DistilBertForSequenceClassification``, ``ElectraForSequenceClassification``, and their bare encoders
    ``BertModel``, ``RobertaModel``, ``XLMRobertaModel``, ``DistilBertModel``, ``ElectraModel``. Per family:

    * RoBERTa / XLM-R (``modeling_roberta``, ``modeling_xlm_roberta``): positions start at
      ``pad_token_id + 1`` there; the converted ``position_embeddings`` holds the source rows from
      ``pad_token_id + 1`` on, so position 0 here is the source's first position and
      ``max_position_embeddings`` shrinks by ``pad_token_id + 1``. HF counts positions over the tokens that
      are not ``pad_token_id``; here they count from each row's start, which is the same when no real token
      is the pad id. The head (dense + tanh + ``out_proj`` on ``<s>``) becomes the last exit's pooler.
    * DistilBERT (``modeling_distilbert``): no token types (one all-zero token-type row), LayerNorm eps
      1e-12; the head ``pre_classifier`` + ReLU + ``classifier`` becomes the last exit with
      ``exit_pooler_activation="relu"``.
    * ELECTRA (``modeling_electra``): only ``embedding_size == hidden_size`` (its ``embeddings_project``
      follows the embedding LayerNorm and cannot be folded into the tables); the head dense + GELU +
      ``out_proj`` becomes the last exit with ``exit_pooler_activation="gelu"``.

    Every converted model runs on the packed engine (:func:`costeff_fast.optimize`,
    :class:`~costeff_fast.inference.CostEffEngineForSequenceClassification`), DistilBERT's ReLU head and ELECTRA's GELU head
    included (the Triton backend computes those one head in torch; its exit kernel computes tanh only).

    Args:
        model: one of the classes above (any dtype; the result has the source's dtype), or a directory
            holding one (loaded with ``AutoModelForSequenceClassification`` when its config names a
            ``*ForSequenceClassification`` architecture, else ``AutoModel``).
        num_labels: number of classes; default from the source classifier (required for a bare encoder).
        **config_overrides: extra :class:`CostEffConfig` fields (e.g. ``entropy_threshold``).

    Returns:
        A model in eval mode (as ``from_pretrained``) whose hidden states ``[B, S, H]`` equal the source's
        (for RoBERTa/XLM-R: when no real token is the pad id); with a source head, the last exit carries it,
        so ``exit_logits[-1] [B, num_labels]`` equals the source's logits. The other exits are freshly
        initialized COST-EFF exits (tanh of [CLS] or of the token mean, then Linear).

    Raises:
        TypeError: ``model`` is none of the supported classes (the message lists them).
        ValueError: ``num_labels`` missing for a bare encoder or conflicting with the source head; a source
            this model cannot reproduce (hidden activation other than the erf ``"gelu"``, relative position
            embeddings, a BERT classifier without its pooler, ELECTRA with ``embedding_size != hidden_size``).
    """
    source = model
    if isinstance(source, (str, Path)):
        source_config = AutoConfig.from_pretrained(source)
        architectures = source_config.architectures or []
        if any(name.endswith("ForSequenceClassification") for name in architectures):
            source = AutoModelForSequenceClassification.from_pretrained(source)
        else:
            source = AutoModel.from_pretrained(source)
    teacher = _read_teacher(source)
    if teacher.head is None:
        if num_labels is None:
            raise ValueError(f"num_labels is required when converting a bare {type(source).__name__}")
        label_fields = {}
    else:
        if num_labels is not None and num_labels != source.config.num_labels:
            raise ValueError(
                f"num_labels={num_labels} conflicts with the source head's {source.config.num_labels}; "
                "omit num_labels or convert the bare encoder"
            )
        num_labels = source.config.num_labels
        label_fields = {"id2label": dict(source.config.id2label), "label2id": dict(source.config.label2id)}
    fields = teacher.fields
    if fields["hidden_act"] != "gelu":
        raise ValueError(
            f"{type(source).__name__} uses hidden_act={fields['hidden_act']!r}; COST-EFF layers compute the "
            "exact erf GELU ('gelu') only, so this teacher cannot be converted exactly"
        )
    pooler = [False] * fields["num_hidden_layers"]
    pooler[-1] = teacher.head is not None
    activation = "tanh" if teacher.head is None else teacher.head_activation
    config = CostEffConfig(
        **fields,
        attention_head_size=fields["hidden_size"] // fields["num_attention_heads"],
        exit_pooler=pooler,
        exit_pooler_activation=activation,
        num_labels=num_labels,
        **label_fields,
        **config_overrides,
    )
    converted = CostEffForSequenceClassification(config)
    state = dict(teacher.state)
    if teacher.head is not None:
        dense, classifier = teacher.head
        last = f"exits.{config.num_hidden_layers - 1}"
        for key, value in dense.state_dict().items():
            state[f"{last}.dense.{key}"] = value
        for key, value in classifier.state_dict().items():
            state[f"{last}.classifier.{key}"] = value
    missing, unexpected = converted.load_state_dict(state, strict=False)
    not_copied = [key for key in missing if not key.startswith("exits.")]
    if unexpected or not_copied:
        raise RuntimeError(
            f"from_encoder_classifier mapping is incomplete: unexpected {unexpected}, not copied {not_copied}"
        )
    return converted.to(teacher.dtype).eval()


def from_bert(bert, num_labels: int | None = None, **config_overrides) -> CostEffForSequenceClassification:
    """Alias of :func:`from_encoder_classifier` (the first name, kept): same arguments, result and errors."""
    return from_encoder_classifier(bert, num_labels=num_labels, **config_overrides)


@dataclass
class _Teacher:
    """What a conversion copies: CostEffConfig fields, the encoder's weights under the COST-EFF model's names, and
    the head as ``(dense, classifier)`` modules with the activation between them (None for a bare encoder)."""

    fields: dict
    state: dict
    head: tuple[nn.Module, nn.Module] | None
    head_activation: str
    dtype: torch.dtype


def _module_state(prefix: str, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """``{prefix + name + "." + key: tensor}`` over the state dicts of ``modules``."""
    return {
        f"{prefix}{name}.{key}": value for name, module in modules.items() for key, value in module.state_dict().items()
    }


def _bert_like_fields(src) -> dict:
    """CostEffConfig fields from a ``BertConfig``-like config (BERT, RoBERTa, XLM-R, ELECTRA)."""
    kind = getattr(src, "position_embedding_type", None) or "absolute"
    if kind != "absolute":
        raise ValueError(
            f"position_embedding_type={kind!r} is not supported; COST-EFF uses absolute position embeddings only"
        )
    return dict(
        vocab_size=src.vocab_size, hidden_size=src.hidden_size, num_hidden_layers=src.num_hidden_layers,
        num_attention_heads=src.num_attention_heads, intermediate_size=src.intermediate_size,
        hidden_act=src.hidden_act, hidden_dropout_prob=src.hidden_dropout_prob,
        attention_probs_dropout_prob=src.attention_probs_dropout_prob,
        max_position_embeddings=src.max_position_embeddings, type_vocab_size=src.type_vocab_size,
        initializer_range=src.initializer_range, layer_norm_eps=src.layer_norm_eps, pad_token_id=src.pad_token_id,
        classifier_dropout=getattr(src, "classifier_dropout", None),
    )


def _bert_like_state(encoder, position_offset: int = 0) -> dict[str, torch.Tensor]:
    """Weights of a BERT-layout encoder (``embeddings`` + ``encoder.layer``) under the COST-EFF model's names; the
    position table starts at row ``position_offset`` (RoBERTa's ``pad_token_id + 1``)."""
    emb = encoder.embeddings
    state = _module_state("embeddings.", {name: getattr(emb, name) for name in
                                          ("word_embeddings", "token_type_embeddings", "LayerNorm")})
    state["embeddings.position_embeddings.weight"] = emb.position_embeddings.weight[position_offset:]
    for index, layer in enumerate(encoder.encoder.layer):
        state.update(_module_state(f"layers.{index}.", {
            "query": layer.attention.self.query,
            "key": layer.attention.self.key,
            "value": layer.attention.self.value,
            "attention_output": layer.attention.output.dense,
            "attention_layer_norm": layer.attention.output.LayerNorm,
            "intermediate": layer.intermediate.dense,
            "output": layer.output.dense,
            "output_layer_norm": layer.output.LayerNorm,
        }))
    return state


def _read_bert(model, encoder) -> _Teacher:
    """BERT and MiniLM (``modeling_bert``): the pooler's dense + tanh + ``classifier`` is the head."""
    if model is not None and encoder.pooler is None:
        raise ValueError("the source BertForSequenceClassification has no pooler; cannot reproduce its logits")
    head = None if model is None else (encoder.pooler.dense, model.classifier)
    return _Teacher(_bert_like_fields(encoder.config), _bert_like_state(encoder), head, "tanh", encoder.dtype)


def _read_roberta(model, encoder) -> _Teacher:
    """RoBERTa and XLM-R (``modeling_roberta``): the position table loses its first ``pad_token_id + 1`` rows."""
    fields = _bert_like_fields(encoder.config)
    offset = encoder.config.pad_token_id + 1
    fields["max_position_embeddings"] -= offset
    if fields["max_position_embeddings"] < 1:
        raise ValueError(
            f"max_position_embeddings={encoder.config.max_position_embeddings} leaves no position after the "
            f"offset pad_token_id + 1 = {offset}"
        )
    head = None if model is None else (model.classifier.dense, model.classifier.out_proj)
    return _Teacher(fields, _bert_like_state(encoder, offset), head, "tanh", encoder.dtype)


def _read_electra(model, encoder) -> _Teacher:
    """ELECTRA (``modeling_electra``) with ``embedding_size == hidden_size``; its head applies GELU."""
    src = encoder.config
    if src.embedding_size != src.hidden_size:
        raise ValueError(
            f"ELECTRA with embedding_size={src.embedding_size} != hidden_size={src.hidden_size} is not supported: "
            "its embeddings_project follows the embedding LayerNorm and cannot be folded into the tables"
        )
    head = None if model is None else (model.classifier.dense, model.classifier.out_proj)
    return _Teacher(_bert_like_fields(src), _bert_like_state(encoder), head, "gelu", encoder.dtype)


def _read_distilbert(model, encoder) -> _Teacher:
    """DistilBERT (``modeling_distilbert``): one all-zero token-type row, one LayerNorm eps, a ReLU head."""
    src = encoder.config
    emb = encoder.embeddings
    fields = dict(
        vocab_size=src.vocab_size, hidden_size=src.dim, num_hidden_layers=src.n_layers,
        num_attention_heads=src.n_heads, intermediate_size=src.hidden_dim, hidden_act=src.activation,
        hidden_dropout_prob=src.dropout, attention_probs_dropout_prob=src.attention_dropout,
        max_position_embeddings=src.max_position_embeddings, type_vocab_size=1,
        initializer_range=src.initializer_range, layer_norm_eps=emb.LayerNorm.eps, pad_token_id=src.pad_token_id,
        classifier_dropout=src.seq_classif_dropout,
    )
    state = _module_state("embeddings.", {"word_embeddings": emb.word_embeddings,
                                          "position_embeddings": emb.position_embeddings,
                                          "LayerNorm": emb.LayerNorm})
    state["embeddings.token_type_embeddings.weight"] = emb.word_embeddings.weight.new_zeros(1, src.dim)
    for index, layer in enumerate(encoder.transformer.layer):
        for norm in (layer.sa_layer_norm, layer.output_layer_norm):
            if norm.eps != emb.LayerNorm.eps:
                raise ValueError(f"DistilBERT layer {index} has LayerNorm eps {norm.eps} != the embedding's "
                                 f"{emb.LayerNorm.eps}; COST-EFF uses one eps")
        state.update(_module_state(f"layers.{index}.", {
            "query": layer.attention.q_lin,
            "key": layer.attention.k_lin,
            "value": layer.attention.v_lin,
            "attention_output": layer.attention.out_lin,
            "attention_layer_norm": layer.sa_layer_norm,
            "intermediate": layer.ffn.lin1,
            "output": layer.ffn.lin2,
            "output_layer_norm": layer.output_layer_norm,
        }))
    head = None if model is None else (model.pre_classifier, model.classifier)
    return _Teacher(fields, state, head, "relu", encoder.dtype)


#: ``(classifier class, encoder class, the classifier's encoder attribute, reader)``, one row per family
_FAMILIES = (
    (BertForSequenceClassification, BertModel, "bert", _read_bert),
    (RobertaForSequenceClassification, RobertaModel, "roberta", _read_roberta),
    (XLMRobertaForSequenceClassification, XLMRobertaModel, "roberta", _read_roberta),
    (DistilBertForSequenceClassification, DistilBertModel, "distilbert", _read_distilbert),
    (ElectraForSequenceClassification, ElectraModel, "electra", _read_electra),
)


def _read_teacher(source) -> _Teacher:
    """Dispatch on the source's class through :data:`_FAMILIES`.

    Raises:
        TypeError: an unsupported class, naming the supported ones.
    """
    for classifier_class, encoder_class, attribute, read in _FAMILIES:
        if isinstance(source, classifier_class):
            return read(source, getattr(source, attribute))
        if isinstance(source, encoder_class):
            return read(None, source)
    raise TypeError(
        f"cannot convert a {type(source).__name__}; supported: {', '.join(SUPPORTED_TEACHERS)} "
        "(transformers classes), or a directory holding one"
    )
