"""The COST-EFF model the Hugging Face Auto classes and ``pipeline`` load: the packed early-exit engine in eval mode.

``import costeff_fast`` registers :class:`CostEffEngineForSequenceClassification` for
``AutoModelForSequenceClassification``, so ``AutoModelForSequenceClassification.from_pretrained(dir)`` and
``pipeline("text-classification", model=dir)`` answer as :meth:`~costeff_fast.inference.CostEffInferenceModel.generate_logits`
does (same truncation, same logits within 1e-4, same exit layers except ties). In training mode, with ``labels``,
``output_hidden_states`` or ``output_exit_logits=True`` it runs the reference padded forward of
:class:`~costeff_fast.modeling.CostEffForSequenceClassification` unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from .checkpoint import load_model, load_tokenizer
from .config import resolve_entropy_threshold
from .inference import CostEffInferenceModel
from .modeling import CostEffClassifierOutput, CostEffForSequenceClassification


class TokenTruncation:
    """Truncate already tokenized rows exactly as ``tokenizer(text, text_pair, truncation=True, max_length=M)``.

    ``pipeline("text-classification")`` tokenizes without truncation, so a row longer than the engine's
    ``max_length`` reaches the model whole. This class recovers the row's content tokens (its text's tokens, or
    the two texts' of a pair) by undoing the tokenizer's special-token template, then lets the ``tokenizers``
    library re-apply that template with truncation: the same Rust code (``longest_first``, the tokenizer's
    ``truncation_side``) as the tokenizer call of :meth:`~costeff_fast.inference.CostEffInferenceModel.encode`.

    Pairs are told from single texts by ``token_type_ids`` where the template gives the second text its own
    type (BERT, ELECTRA); otherwise (RoBERTa, XLM-R, DistilBERT, or no ``token_type_ids`` passed) by the number
    of special tokens in the row. A text that itself contains the tokenizer's special tokens literally (e.g.
    ``"</s>"``) can make that count ambiguous; such a row is refused, or, where the count matches the other
    template, read as that kind of row.

    Args:
        tokenizer: a fast (``tokenizers``-backed) Hugging Face tokenizer, the one the rows were encoded with.
        max_length: M, the longest row kept, special tokens included (int >= the template's special tokens).

    Raises:
        ValueError: a tokenizer without a ``tokenizers`` backend.
    """

    def __init__(self, tokenizer, max_length: int):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(
                f"{type(tokenizer).__name__} has no tokenizers backend; re-truncating over-long rows needs a fast "
                "tokenizer (or tokenize with truncation=True, max_length=model.max_length)"
            )
        vocab = backend.get_vocab(with_added_tokens=True)
        unknown = tokenizer.unk_token if tokenizer.unk_token in vocab else next(iter(vocab))
        # One vocabulary entry per token string: encoding a row's token strings as pre-split words gives its ids.
        self._words = Tokenizer(WordLevel(vocab, unk_token=unknown))
        self._template = Tokenizer(WordLevel(vocab, unk_token=unknown))
        self._template.post_processor = backend.post_processor
        self._template.enable_truncation(max_length, stride=0, strategy="longest_first",
                                         direction=tokenizer.truncation_side)
        self._tokenizer = tokenizer
        self._special_ids = set(tokenizer.all_special_ids)
        self.max_length = max_length
        probe = self._encode([next(iter(vocab.values()))])
        single = self._template.post_process(probe, None, add_special_tokens=True)
        pair = self._template.post_process(probe, probe, add_special_tokens=True)
        #: [(specials before A, specials after A)] of a single text, and the template's type of A
        self._single = (single.sequence_ids.index(0), len(single.ids) - 1 - single.sequence_ids.index(0))
        first, second = pair.sequence_ids.index(0), pair.sequence_ids.index(1)
        #: specials before A, between A and B, after B
        self._pair = (first, second - first - 1, len(pair.ids) - 1 - second)
        self._type_a, self._type_b = pair.type_ids[first], pair.type_ids[second]
        #: how many of the pair template's specials carry A's type
        self._pair_specials_of_type_a = sum(
            1 for seq, kind in zip(pair.sequence_ids, pair.type_ids) if seq is None and kind == self._type_a)

    def _encode(self, ids: list[int]):
        """A ``tokenizers.Encoding`` holding exactly ``ids`` (no special tokens added)."""
        tokens = [self._words.id_to_token(i) for i in ids]
        encoding = self._words.encode(tokens, is_pretokenized=True, add_special_tokens=False)
        if encoding.ids != list(ids):
            raise ValueError("a row holds token ids that share a token string in the vocabulary; cannot re-truncate "
                             "it: tokenize with truncation=True, max_length=model.max_length")
        return encoding

    def _split(self, ids: list[int], type_ids: list[int] | None) -> tuple[list[int], list[int] | None]:
        """The content tokens of a row: ``(A, None)`` for a single text, ``(A, B)`` for a pair."""
        pre, mid, post = self._pair
        if type_ids is not None and self._type_a != self._type_b:
            if self._type_b not in type_ids:
                return ids[self._single[0]: len(ids) - self._single[1]], None
            length_a = sum(1 for kind in type_ids if kind == self._type_a) - self._pair_specials_of_type_a
            return ids[pre: pre + length_a], ids[pre + length_a + mid: len(ids) - post]
        specials = [index for index, token in enumerate(ids) if token in self._special_ids]
        if len(specials) == sum(self._single):
            return ids[self._single[0]: len(ids) - self._single[1]], None
        if len(specials) == pre + mid + post:
            length_a = specials[pre] - pre
            return ids[pre: pre + length_a], ids[pre + length_a + mid: len(ids) - post]
        raise ValueError(
            f"a row of {len(ids)} tokens holds {len(specials)} special tokens, matching neither the single-text nor "
            "the pair template; cannot re-truncate it: tokenize with truncation=True, max_length=model.max_length"
        )

    def __call__(self, ids: list[int], type_ids: list[int] | None) -> tuple[list[int], list[int]]:
        """``(input_ids, token_type_ids)`` of the row as the tokenizer would have truncated it to ``max_length``.

        Args:
            ids: the row's token ids, special tokens included, no padding.
            type_ids: its ``token_type_ids`` (same length) or None.

        Raises:
            ValueError: a row whose texts cannot be recovered (see the class notes).
        """
        first, second = self._split(ids, type_ids)
        encoding = self._template.post_process(
            self._encode(first), None if second is None else self._encode(second), add_special_tokens=True)
        return encoding.ids, encoding.type_ids


class CostEffEngineForSequenceClassification(CostEffForSequenceClassification):
    """:class:`~costeff_fast.modeling.CostEffForSequenceClassification` whose eval-mode ``forward`` runs the
    packed early-exit engine; what ``AutoModelForSequenceClassification`` and ``pipeline`` load.

    Eval mode (``model.eval()``, as ``from_pretrained`` and ``pipeline`` leave it): ``forward`` strips the
    padding, truncates rows longer than :attr:`max_length` as the tokenizer would have
    (:class:`TokenTruncation`), and runs :meth:`CostEffInferenceModel.generate_logits
    <costeff_fast.inference.CostEffInferenceModel.generate_logits>` on a
    :class:`~costeff_fast.inference.CostEffInferenceModel` packed from this model's weights. The packed copy
    (about the size of the weights again) is made at the first eval call and remade when a parameter changes
    (moved, loaded or edited in place), or when :attr:`engine_backend` or the device changes. Its logits carry no
    gradient.

    Training mode, or a call with ``labels``, ``output_hidden_states=True`` or ``output_exit_logits=True``:
    the reference padded forward, every layer and every exit, unchanged (training code may use either class).

    Attributes:
        tokenizer: the checkpoint's tokenizer, loaded by :meth:`from_pretrained` from a directory holding
            tokenizer files (None otherwise; it may be set). It sets :attr:`max_length` and re-truncates
            over-long rows.
        engine_backend: the engine's backend name (``"auto"``, ``"torch"``, ``"native"``, ``"triton"``; see
            :func:`~costeff_fast.inference.from_pretrained`). Class default ``"auto"``; set it on an instance.
    """

    engine_backend = "auto"

    def __init__(self, config):
        super().__init__(config)
        self.tokenizer = None
        self._engine: CostEffInferenceModel | None = None
        self._engine_key = None
        self._truncation: TokenTruncation | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, plus the directory's tokenizer in :attr:`tokenizer` when it has
        tokenizer files. A local directory is first loaded and checked as :func:`costeff_fast.from_pretrained`
        does (:func:`~costeff_fast.checkpoint.load_model`, :func:`~costeff_fast.checkpoint.load_tokenizer`), so a
        weight Hugging Face would re-initialise, a pickle it would unpickle or a NaN it would load is refused.

        Raises:
            FileNotFoundError: a local directory without ``config.json`` or ``model.safetensors`` (a
                ``pytorch_model.bin`` is never loaded).
            CheckpointError: a config field, weight file or tensor that cannot serve the model (missing,
                unexpected, of another shape, NaN or inf), tokenizer files that cannot be loaded, or a tokenizer
                larger than the vocabulary.
        """
        directory = Path(pretrained_model_name_or_path) / kwargs.get("subfolder", "")
        local = directory.is_dir()
        if local and kwargs.get("state_dict") is None:  # weights given in memory are the caller's to check
            load_model(directory)  # strict: refuses what Hugging Face's loader would accept
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if local:
            model.tokenizer = load_tokenizer(directory, model.config)
        return loaded

    @property
    def max_length(self) -> int:
        """The longest row in tokens the engine takes: ``min(max_position_embeddings, tokenizer.model_max_length)``,
        as :class:`~costeff_fast.inference.CostEffInferenceModel` computes it."""
        limits = [self.config.max_position_embeddings]
        if self.tokenizer is not None and self.tokenizer.model_max_length:
            limits.append(int(min(self.tokenizer.model_max_length, 1 << 30)))
        return min(limits)

    @property
    def engine(self) -> CostEffInferenceModel:
        """The :class:`~costeff_fast.inference.CostEffInferenceModel` packed from the current weights (re-packed
        when they, the device or :attr:`engine_backend` changed since the last call)."""
        key = (self.engine_backend, str(self.device),
               tuple((p.data_ptr(), p._version, p.dtype) for p in self.parameters()))
        if self._engine is None or key != self._engine_key:
            self._engine = CostEffInferenceModel(self, tokenizer=None, backend=self.engine_backend, device=self.device)
            self._engine_key = key
        return self._engine

    def _truncator(self) -> TokenTruncation:
        if self.tokenizer is None:
            raise ValueError(
                f"a row is longer than max_position_embeddings={self.config.max_position_embeddings} and this model "
                "has no tokenizer to truncate it with: tokenize with truncation=True, or load the model from a "
                "checkpoint directory holding tokenizer files (or set model.tokenizer)"
            )
        if self._truncation is None or self._truncation.max_length != self.max_length \
                or self._truncation._tokenizer is not self.tokenizer:
            self._truncation = TokenTruncation(self.tokenizer, self.max_length)
        return self._truncation

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
        output_exit_logits: bool = False,
        **kwargs,
    ) -> CostEffClassifierOutput | tuple[torch.Tensor, ...]:
        """Classify a batch: the early-exit engine in eval mode, the reference forward otherwise.

        Args:
            input_ids: ``[B, S]`` int64 token ids, right-padded (a row may be longer than :attr:`max_length`:
                it is truncated as the tokenizer would have, see :class:`TokenTruncation`).
            attention_mask: ``[B, S]``, ones then zeros in each row (default all ones).
            token_type_ids: ``[B, S]`` segment ids (default zeros).
            labels, output_hidden_states, gradient_equilibrium: as in
                :meth:`CostEffForSequenceClassification.forward`; any of them selects the reference forward.
            return_dict: False returns a tuple (engine: ``(logits, exit_layer)``).
            entropy_threshold: nats, a float or one per layer; None: the checkpoint's
                (:func:`~costeff_fast.config.resolve_entropy_threshold`).
            output_exit_logits: True runs the reference forward in eval mode too, returning every exit's logits.

        Returns:
            :class:`~costeff_fast.modeling.CostEffClassifierOutput` (a ``SequenceClassifierOutput``): from the
            engine ``logits [B, num_labels]`` fp32 of each row's exit and ``exit_layer [B]`` int64 (1-based), on
            the model's device, ``exit_logits`` None; from the reference forward, what it returns.

        Raises:
            TypeError: float token ids, mask or type ids (never rounded).
            ValueError: left padding, an empty row, ids outside the vocabulary, a bad threshold, an over-long
                row without a tokenizer or whose texts cannot be recovered, or another keyword argument given a
                value (``inputs_embeds``, ``position_ids``, ... are not supported).
        """
        if self.training or labels is not None or output_hidden_states or output_exit_logits or gradient_equilibrium:
            return super().forward(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                   labels=labels, output_hidden_states=output_hidden_states, return_dict=return_dict,
                                   entropy_threshold=entropy_threshold, gradient_equilibrium=gradient_equilibrium,
                                   **kwargs)
        given = sorted(name for name, value in kwargs.items() if value is not None and value is not False
                       and name != "use_cache")
        if given:
            raise ValueError(f"{', '.join(given)}: not supported by the COST-EFF engine; pass input_ids, "
                             "attention_mask and token_type_ids")
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a [batch, seq] LongTensor, got {getattr(input_ids, 'shape', input_ids)}")
        tau = resolve_entropy_threshold(entropy_threshold, self.config)
        batch = {"input_ids": input_ids.cpu(), "attention_mask": None if attention_mask is None else attention_mask.cpu(),
                 "token_type_ids": None if token_type_ids is None else token_type_ids.cpu()}
        mask = batch["attention_mask"]
        lengths = mask.sum(dim=1) if mask is not None else torch.full((input_ids.shape[0],), input_ids.shape[1])
        if len(lengths) and int(lengths.max()) > self.max_length:
            batch = self._truncated(batch, lengths)
        engine = self.engine
        logits, exit_layer = engine.generate_logits(batch, entropy_threshold=tau, return_exit_layers=True)
        # outside inference mode: ordinary tensors the caller may use in autograd code
        logits, exit_layer = logits.clone().to(self.device), exit_layer.clone().to(self.device)
        output = CostEffClassifierOutput(logits=logits, exit_layer=exit_layer)
        return output if return_dict else output.to_tuple()

    def _truncated(self, batch: dict, lengths: torch.Tensor) -> dict:
        """The batch as unpadded lists of ids, rows longer than :attr:`max_length` re-truncated."""
        mask = batch["attention_mask"]
        if mask is not None:
            prefix = torch.arange(mask.shape[1])[None, :] < lengths[:, None]
            if not torch.equal(mask.to(torch.bool), prefix):
                raise ValueError("attention_mask must be right-padded (ones, then zeros) in every row")
        truncate = self._truncator()
        types = batch["token_type_ids"]
        rows, row_types = [], []
        for index, length in enumerate(lengths.tolist()):
            ids = batch["input_ids"][index, :length].tolist()
            kinds = None if types is None else types[index, :length].tolist()
            if length > self.max_length:
                ids, kinds = truncate(ids, kinds)
            rows.append(ids)
            row_types.append([0] * len(ids) if types is None else kinds)  # no types given: zeros, as for the rest
        return {"input_ids": rows, "token_type_ids": row_types}
