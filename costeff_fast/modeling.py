"""Trainable reference model: a post-LN BERT encoder with per-layer widths and an exit after every layer.

Its math is plain PyTorch on padded ``[batch, seq, hidden]`` tensors; the exit math comes from
:mod:`costeff_fast.reference`, and :meth:`CostEffForSequenceClassification.early_exit_reference` (each row
alone) is the oracle of the packed, padding-free engine in :mod:`costeff_fast.engine`. Hugging Face teachers
become this model in :mod:`costeff_fast.convert`, which imports this module (never the other way).
Source: COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523), Sec. 3; BERT layer as in
``transformers.models.bert.modeling_bert``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
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
    ``config.exit_pooler_activation`` (``"tanh"``: BERT's pooler and RoBERTa's/XLM-R's head; ``"relu"``/``"gelu"``:
    the heads of a DistilBERT/ELECTRA classifier converted by :mod:`costeff_fast.convert`; every backend of the
    engine runs all three). The math is :func:`costeff_fast.reference.exit_logits`.
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
