"""Trainable reference model: a post-LN BERT encoder with per-layer widths and an exit after every layer.

Its math is plain PyTorch on padded ``[batch, seq, hidden]`` tensors; the exit math comes from
:mod:`costeff_fast.reference`, and :meth:`CostEffForSequenceClassification.early_exit_reference` (each row
alone) is the oracle of the packed, padding-free engine in :mod:`costeff_fast.engine`.
Source: COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523), Sec. 3; BERT layer as in
``transformers.models.bert.modeling_bert``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    BertModel,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from .config import CostEffConfig, resolve_entropy_threshold
from .reference import exit_decision, exit_entropy, exit_logits, first_exit

INTEGER_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
"""Dtypes accepted for token ids, segment ids, masks and labels (floats are never rounded into ids)."""


def check_right_padded(attention_mask: torch.Tensor) -> torch.Tensor:
    """Return the row lengths ``[B]`` int64 of a right-padded ``[B, S]`` mask.

    Raises:
        ValueError: a row's mask is not ones, then zeros (left padding or holes; the positions are ``arange(S)``).
    """
    mask = attention_mask.to(torch.bool)
    lengths = mask.sum(dim=1)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(mask, prefix):
        raise ValueError(
            "attention_mask must be right-padded (ones, then zeros) in every row; tokenize with "
            "padding_side='right' or pass unpadded lists of ids"
        )
    return lengths


class _GradientRescale(torch.autograd.Function):
    """Identity forward, ``grad * scale`` backward (gradient equilibrium, Li et al. 2019)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def gradient_rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Return ``x`` unchanged; its gradient is multiplied by ``scale`` on the way back."""
    return _GradientRescale.apply(x, scale)


class CostEffEmbeddings(nn.Module):
    """Word (optionally factorized to rank r), position and token-type embeddings, then LayerNorm."""

    def __init__(self, config: CostEffConfig):
        super().__init__()
        rank = config.embedding_rank
        self.word_embeddings = nn.Embedding(
            config.vocab_size, rank or config.hidden_size, padding_idx=config.pad_token_id
        )
        # Factorized embedding E = A @ B (COST-EFF Sec. 3.2): A = word_embeddings [V, r], B = word_projection.
        self.word_projection = nn.Linear(rank, config.hidden_size, bias=False) if rank else None
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def word_embedding_matrix(self) -> torch.Tensor:
        """The full ``[vocab_size, hidden_size]`` word embedding (the product A @ B when factorized)."""
        weight = self.word_embeddings.weight
        return weight if self.word_projection is None else weight @ self.word_projection.weight.T

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        words = self.word_embeddings(input_ids)
        if self.word_projection is not None:
            words = self.word_projection(words)
        positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
        hidden = words + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(hidden))


class CostEffLayer(nn.Module):
    """One post-LN BERT layer with ``h_l`` heads of size d and an FFN of width ``F_l``."""

    def __init__(self, config: CostEffConfig, layer_index: int):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads[layer_index]
        self.head_size = config.attention_head_size
        width = self.num_heads * self.head_size
        self.query = nn.Linear(hidden, width)
        self.key = nn.Linear(hidden, width)
        self.value = nn.Linear(hidden, width)
        self.attention_output = nn.Linear(width, hidden)  # W_O: head h owns input columns [h*d, (h+1)*d)
        self.attention_layer_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(hidden, config.intermediate_size[layer_index])  # W_1
        self.output = nn.Linear(config.intermediate_size[layer_index], hidden)  # W_2
        self.output_layer_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.attention_dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """``hidden [B, S, H]``, ``additive_mask [B, 1, 1, S]`` (0 for tokens, -inf-like for padding)."""
        batch, seq, _ = hidden.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, seq, self.num_heads, self.head_size).transpose(1, 2)

        q, k, v = heads(self.query(hidden)), heads(self.key(hidden)), heads(self.value(hidden))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size) + additive_mask
        probs = self.attention_dropout(torch.softmax(scores, dim=-1))
        context = (probs @ v).transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_size)
        hidden = self.attention_layer_norm(hidden + self.dropout(self.attention_output(context)))
        ffn = self.output(F.gelu(self.intermediate(hidden)))
        return self.output_layer_norm(hidden + self.dropout(ffn))


class CostEffExit(nn.Module):
    """Exit classifier: ``Linear(H, C)(tanh(x))`` (COST-EFF) with x the [CLS] vector or the mean of the row's
    tokens (``config.exit_pooling``), or ``Linear(H, C)(act(dense(x_cls)))`` with a pooler, where ``act`` is
    ``config.exit_pooler_activation`` (``"tanh"``: BERT's pooler; ``"relu"``/``"gelu"``: the heads of a
    converted DistilBERT/ELECTRA classifier). The math is :func:`costeff_fast.reference.exit_logits`.
    """

    def __init__(self, config: CostEffConfig, pooler: bool):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size) if pooler else None
        self.pooler_activation = config.exit_pooler_activation if pooler else "tanh"
        self.pooling = "cls" if pooler else config.exit_pooling
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``hidden [B, S, H]``, ``attention_mask [B, S]`` (1 = token) -> logits ``[B, num_labels]``."""
        if self.pooling == "cls":
            features = hidden[:, 0]
        else:
            mask = attention_mask.to(hidden.dtype)[..., None]
            features = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
        pooler_weight = None if self.dense is None else self.dense.weight.T
        pooler_bias = None if self.dense is None else self.dense.bias
        return exit_logits(features, self.classifier.weight.T, self.classifier.bias, pooler_weight, pooler_bias,
                           dropout=self.dropout, pooler_activation=self.pooler_activation)


@dataclass
class CostEffClassifierOutput(SequenceClassifierOutput):
    """``SequenceClassifierOutput`` plus the logits of every exit.

    Attributes:
        logits: ``[B, num_labels]`` of the answering exit (the last one, or each row's early exit).
        exit_logits: tuple of ``num_hidden_layers`` tensors ``[B, num_labels]``, exit 1 first.
        exit_layer: ``[B]`` int64, 1-based layer that answered each row.
        hidden_states: with ``output_hidden_states``, ``num_hidden_layers + 1`` tensors ``[B, S, H]``
            (embedding output first).
    """

    exit_logits: tuple[torch.Tensor, ...] | None = None
    exit_layer: torch.Tensor | None = None


class CostEffPreTrainedModel(PreTrainedModel):
    """Weight initialization and HF loading glue for COST-EFF models."""

    config_class = CostEffConfig
    base_model_prefix = "costeff"
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()


class CostEffForSequenceClassification(CostEffPreTrainedModel):
    """Slenderized multi-exit BERT classifier (COST-EFF, arXiv 2210.15523, Sec. 3).

    ``forward`` computes every layer and every exit on padded inputs (training and the reference);
    with an entropy threshold (argument or ``config.entropy_threshold``, eval mode only) each row's
    ``logits`` come from its first confident exit. :meth:`early_exit_reference` runs each row alone and
    stops at its exit: the oracle of the batch engine.
    """

    def __init__(self, config: CostEffConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.embeddings = CostEffEmbeddings(config)
        self.layers = nn.ModuleList(CostEffLayer(config, i) for i in range(config.num_hidden_layers))
        self.exits = nn.ModuleList(CostEffExit(config, pooler) for pooler in config.exit_pooler)
        self.post_init()

    def _check_inputs(self, input_ids, attention_mask, token_type_ids, labels):
        """Checked ``(input_ids, attention_mask, token_type_ids, labels)``; ids, type ids and labels as int64."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a [batch, seq] LongTensor, got {getattr(input_ids, 'shape', input_ids)}")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}; tokenize with truncation=True"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        for name, tensor in (("input_ids", input_ids), ("attention_mask", attention_mask),
                             ("token_type_ids", token_type_ids)):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name} must be a torch tensor like input_ids, got {type(tensor).__name__}; "
                                "tokenize with return_tensors='pt'")
            if tensor.shape != input_ids.shape:
                raise ValueError(f"{name} shape {tuple(tensor.shape)} != input_ids shape {tuple(input_ids.shape)}")
            if tensor.dtype not in INTEGER_DTYPES and not (name == "attention_mask" and tensor.dtype == torch.bool):
                kind = "an integer or bool" if name == "attention_mask" else "an integer"
                raise TypeError(f"{name} must be {kind} tensor (torch.long), got dtype {tensor.dtype}; ids are "
                                "never rounded or cast from floats")
        if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape[:1]
                                   or labels.dtype not in INTEGER_DTYPES):
            raise ValueError(f"labels must be a [batch] integer tensor of {input_ids.shape[0]} class ids, got "
                             f"{getattr(labels, 'dtype', type(labels).__name__)} of shape "
                             f"{tuple(getattr(labels, 'shape', ()))}")
        input_ids, token_type_ids = input_ids.long(), token_type_ids.long()
        labels = labels.long() if labels is not None else None
        if torch.compiler.is_exporting() or torch.compiler.is_compiling():
            return input_ids, attention_mask, token_type_ids, labels  # value checks would break the traced graph
        # One device sync for every range check (the positions are arange(S), so padding must be on the right).
        mask = attention_mask.to(torch.bool)
        checks = [
            ((input_ids < 0) | (input_ids >= self.config.vocab_size)).any(),
            ((token_type_ids < 0) | (token_type_ids >= self.config.type_vocab_size)).any(),
            ((attention_mask != 0) & (attention_mask != 1)).any() | (mask[:, 1:] & ~mask[:, :-1]).any(),
        ]
        if labels is not None:
            checks.append(((labels < 0) | (labels >= self.num_labels)).any())
        bad = torch.stack(checks).tolist()
        if bad[0]:
            raise ValueError(f"input_ids must lie in [0, vocab_size={self.config.vocab_size}); tokenize with this "
                             "checkpoint's tokenizer")
        if bad[1]:
            raise ValueError(f"token_type_ids must lie in [0, type_vocab_size={self.config.type_vocab_size}); "
                             "tokenize with this checkpoint's tokenizer (type_vocab_size=1 takes no pair segment)")
        if bad[2]:
            raise ValueError("attention_mask must be right-padded (ones, then zeros) in every row; tokenize with "
                             "padding_side='right'")
        if labels is not None and bad[3]:
            raise ValueError(f"labels must lie in [0, num_labels={self.num_labels}); map them through "
                             "config.label2id (the ignore index -100 is not supported)")
        return input_ids, attention_mask, token_type_ids, labels

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        entropy_threshold: float | list[float] | None = None,
        gradient_equilibrium: bool = False,
        **kwargs,
    ) -> CostEffClassifierOutput:
        """Run every layer and every exit.

        Args:
            input_ids: ``[B, S]`` integer token ids in ``[0, vocab_size)``.
            attention_mask: ``[B, S]`` 1 for tokens, 0 for padding, right-padded (default all ones).
            token_type_ids: ``[B, S]`` segment ids in ``[0, type_vocab_size)`` (default zeros).
            labels: ``[B]`` integer class ids in ``[0, num_labels)``; the loss is the mean cross-entropy over all
                exits.
            output_hidden_states: also return the ``L + 1`` hidden states.
            entropy_threshold: nats, float or one per layer; in eval mode ``logits`` are each row's first
                confident exit under :func:`~costeff_fast.config.resolve_entropy_threshold` (None: the
                checkpoint's threshold); in training mode ``logits`` are the last exit's.
            gradient_equilibrium: rescale gradients between layers (Li et al. 2019; COST-EFF Sec. 3.3):
                the backward of layer l's output (1-based) is scaled by ``1/(L-l+1)``, and the backward
                from layer l+1 into it additionally by ``L-l``, so the deeper path carries
                ``(L-l)/(L-l+1)`` as in the authors' code. The forward is unchanged.

        Returns:
            :class:`CostEffClassifierOutput` (a tuple ``(loss?, logits, exit_logits)`` if not return_dict).

        Raises:
            TypeError: ids, mask or segment ids of a float dtype (never rounded).
            ValueError: not ``[B, S]``, longer than ``max_position_embeddings``, shapes that differ, ids or
                segment ids out of range, a mask that is not right-padded 0/1, labels not ``[B]`` integer class
                ids in range.
        """
        input_ids, attention_mask, token_type_ids, labels = self._check_inputs(
            input_ids, attention_mask, token_type_ids, labels)
        dtype = self.embeddings.position_embeddings.weight.dtype
        additive_mask = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        hidden = self.embeddings(input_ids, token_type_ids)
        all_hidden = [hidden]
        exit_logits = []
        num_layers = self.config.num_hidden_layers
        for index, (layer, exit_head) in enumerate(zip(self.layers, self.exits)):
            hidden = layer(hidden, additive_mask)
            depth = index + 1
            if gradient_equilibrium:
                hidden = gradient_rescale(hidden, 1.0 / (num_layers - depth + 1))
            exit_logits.append(exit_head(hidden, attention_mask))
            all_hidden.append(hidden)
            if gradient_equilibrium and depth < num_layers:
                hidden = gradient_rescale(hidden, float(num_layers - depth))

        tau = [0.0] * num_layers if self.training else resolve_entropy_threshold(entropy_threshold, self.config)
        stacked = torch.stack(exit_logits, dim=1)  # [B, L, C]
        exit_layer = first_exit(exit_entropy(stacked), tau)
        logits = stacked[torch.arange(stacked.shape[0], device=stacked.device), exit_layer - 1]
        loss = None
        if labels is not None:
            loss = torch.stack([F.cross_entropy(z, labels) for z in exit_logits]).mean()
        if not return_dict:
            return tuple(x for x in (loss, logits, tuple(exit_logits)) if x is not None)
        return CostEffClassifierOutput(
            loss=loss,
            logits=logits,
            exit_logits=tuple(exit_logits),
            exit_layer=exit_layer,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
        )

    @torch.no_grad()
    def early_exit_reference(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        entropy_threshold: float | list[float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample early exit: each row runs alone (batch size 1, padding removed) and stops at its exit.

        Slow by design; it is the oracle for :mod:`costeff_fast.engine` (docs/design.md, Engine).

        Args:
            input_ids, attention_mask, token_type_ids: ``[B, S]`` as in :meth:`forward` (right-padded).
            entropy_threshold: nats, float or one per layer, resolved by
                :func:`~costeff_fast.config.resolve_entropy_threshold` (None: the checkpoint's threshold).

        Returns:
            ``logits [B, num_labels]`` fp32, ``exit_layer [B]`` int64 (1-based),
            ``entropy [B]`` fp32 of the answering exit (nats).
        """
        input_ids, attention_mask, token_type_ids, _ = self._check_inputs(
            input_ids, attention_mask, token_type_ids, None)
        tau = resolve_entropy_threshold(entropy_threshold, self.config)
        num_layers = self.config.num_hidden_layers
        logits_out, layer_out, entropy_out = [], [], []
        for row in range(input_ids.shape[0]):
            length = int(attention_mask[row].sum())
            ids = input_ids[row : row + 1, :length]
            hidden = self.embeddings(ids, token_type_ids[row : row + 1, :length])
            no_mask = hidden.new_zeros(1, 1, 1, length)
            for depth, (layer, exit_head) in enumerate(zip(self.layers, self.exits), start=1):
                hidden = layer(hidden, no_mask)
                logits = exit_head(hidden, attention_mask[row : row + 1, :length]).float()
                entropy = exit_entropy(logits)
                if depth == num_layers or bool(exit_decision(logits, tau[depth - 1])):
                    break
            logits_out.append(logits[0])
            layer_out.append(depth)
            entropy_out.append(entropy[0])
        num_labels = self.config.num_labels
        if not logits_out:
            return torch.empty(0, num_labels), torch.empty(0, dtype=torch.long), torch.empty(0)
        return torch.stack(logits_out), torch.tensor(layer_out), torch.stack(entropy_out)

    @classmethod
    def from_encoder_classifier(
        cls, source, num_labels: int | None = None, **config_overrides
    ) -> "CostEffForSequenceClassification":
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

        The packed engine (:func:`costeff_fast.optimize`, :class:`~costeff_fast.inference.CostEffInferenceModel`)
        runs tanh exits only, so it refuses the converted DistilBERT and ELECTRA classifiers; their bare
        encoders (no head) convert to tanh exits the engine runs.

        Args:
            source: one of the classes above (any dtype; the result has the source's dtype), or a directory
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
            TypeError: ``source`` is none of the supported classes (the message lists them).
            ValueError: ``num_labels`` missing for a bare encoder or conflicting with the source head; a source
                this model cannot reproduce (hidden activation other than the erf ``"gelu"``, relative position
                embeddings, a BERT classifier without its pooler, ELECTRA with ``embedding_size != hidden_size``).
        """
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
        model = cls(config)
        state = dict(teacher.state)
        if teacher.head is not None:
            dense, classifier = teacher.head
            last = f"exits.{config.num_hidden_layers - 1}"
            for key, value in dense.state_dict().items():
                state[f"{last}.dense.{key}"] = value
            for key, value in classifier.state_dict().items():
                state[f"{last}.classifier.{key}"] = value
        missing, unexpected = model.load_state_dict(state, strict=False)
        not_copied = [key for key in missing if not key.startswith("exits.")]
        if unexpected or not_copied:
            raise RuntimeError(
                f"from_encoder_classifier mapping is incomplete: unexpected {unexpected}, not copied {not_copied}"
            )
        return model.to(teacher.dtype).eval()

    @classmethod
    def from_bert(cls, bert, num_labels: int | None = None, **config_overrides) -> "CostEffForSequenceClassification":
        """Alias of :meth:`from_encoder_classifier` (the first name, kept): same arguments, result and errors."""
        return cls.from_encoder_classifier(bert, num_labels=num_labels, **config_overrides)


#: the Hugging Face classes :meth:`CostEffForSequenceClassification.from_encoder_classifier` converts, classifiers
#: first (``transformers`` class names; each family's bare encoder converts too)
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


@dataclass
class _Teacher:
    """What a conversion copies: CostEffConfig fields, the encoder's weights under this model's names, and the
    head as ``(dense, classifier)`` modules with the activation between them (None for a bare encoder)."""

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
    """Weights of a BERT-layout encoder (``embeddings`` + ``encoder.layer``) under this model's names; the position
    table starts at row ``position_offset`` (RoBERTa's ``pad_token_id + 1``)."""
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
    if model is not None and encoder.pooler is None:
        raise ValueError("the source BertForSequenceClassification has no pooler; cannot reproduce its logits")
    head = None if model is None else (encoder.pooler.dense, model.classifier)
    return _Teacher(_bert_like_fields(encoder.config), _bert_like_state(encoder), head, "tanh", encoder.dtype)


def _read_roberta(model, encoder) -> _Teacher:
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
    src = encoder.config
    if src.embedding_size != src.hidden_size:
        raise ValueError(
            f"ELECTRA with embedding_size={src.embedding_size} != hidden_size={src.hidden_size} is not supported: "
            "its embeddings_project follows the embedding LayerNorm and cannot be folded into the tables"
        )
    head = None if model is None else (model.classifier.dense, model.classifier.out_proj)
    return _Teacher(_bert_like_fields(src), _bert_like_state(encoder), head, "gelu", encoder.dtype)


def _read_distilbert(model, encoder) -> _Teacher:
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


def _read_teacher(source) -> _Teacher:
    """Dispatch on the source's class: ``(classifier class, encoder class, encoder attribute, reader)``.

    Raises:
        TypeError: an unsupported class, naming the supported ones.
    """
    from transformers import (
        DistilBertForSequenceClassification,
        DistilBertModel,
        ElectraForSequenceClassification,
        ElectraModel,
        RobertaForSequenceClassification,
        RobertaModel,
        XLMRobertaForSequenceClassification,
        XLMRobertaModel,
    )

    families = (
        (BertForSequenceClassification, BertModel, "bert", _read_bert),
        (RobertaForSequenceClassification, RobertaModel, "roberta", _read_roberta),
        (XLMRobertaForSequenceClassification, XLMRobertaModel, "roberta", _read_roberta),
        (DistilBertForSequenceClassification, DistilBertModel, "distilbert", _read_distilbert),
        (ElectraForSequenceClassification, ElectraModel, "electra", _read_electra),
    )
    for classifier_class, encoder_class, attribute, read in families:
        if isinstance(source, classifier_class):
            return read(source, getattr(source, attribute))
        if isinstance(source, encoder_class):
            return read(None, source)
    raise TypeError(
        f"cannot convert a {type(source).__name__}; supported: {', '.join(SUPPORTED_TEACHERS)} "
        "(transformers classes), or a directory holding one"
    )
