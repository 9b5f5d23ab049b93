"""One input path for every entry point: strings, ``(text, text_pair)`` lists and tokenized mappings are checked,
truncated by one ``max_length`` rule and packed into padding-free token ids.

:class:`InputEncoder` serves ``generate_logits``, ``generate_logits_stream``, ``forward`` (the Auto classes and
``pipeline``), :func:`~costeff_fast.optimize` and the batch jobs alike, so a batch is refused, or truncated, the
same way wherever it enters. The rules (docs/input-validation.md):

* text is tokenized with ``truncation=True, max_length=M``, where ``M = min(max_position_embeddings,
  tokenizer.model_max_length)`` (:func:`max_length`);
* a tokenized row longer than ``M`` is truncated as the tokenizer would have truncated its text
  (:class:`TokenTruncation`; ``pipeline`` tokenizes without truncation); without a tokenizer it is refused;
* ids are never cast from floats or bools, padding must be on the right, every row holds a token, ids lie in the
  vocabulary and type ids in ``[0, type_vocab_size)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from .config import CostEffConfig
from .modeling import INTEGER_DTYPES, check_right_padded

#: the fields of a tokenized mapping the engine reads
TOKENIZED_FIELDS = ("input_ids", "attention_mask", "token_type_ids")

#: rows tokenized and packed at a time by :meth:`InputEncoder.chunks`: bounds the memory of the token lists
#: (Python ints) of a large call to one chunk's, whatever the number of rows
ROWS_PER_CHUNK = 2048


def max_length(config: CostEffConfig, tokenizer=None) -> int:
    """The longest row in tokens the model takes, special tokens included: ``min(max_position_embeddings,
    tokenizer.model_max_length)`` (the tokenizer's value is ignored when unset or huge, as Hugging Face's
    ``VERY_LARGE_INTEGER`` sentinel is)."""
    limits = [config.max_position_embeddings]
    if getattr(tokenizer, "model_max_length", None):
        limits.append(int(min(tokenizer.model_max_length, 1 << 30)))
    return min(limits)


class TokenTruncation:
    """Truncate already tokenized rows exactly as ``tokenizer(text, text_pair, truncation=True, max_length=M)``.

    ``pipeline("text-classification")`` tokenizes without truncation, so a row longer than ``M`` reaches the model
    whole. This class recovers the row's content tokens (its text's tokens, or the two texts' of a pair) by undoing
    the tokenizer's special-token template, then lets the ``tokenizers`` library re-apply that template with
    truncation: the same Rust code (``longest_first``, the tokenizer's ``truncation_side``) as a tokenizer call.

    Pairs are told from single texts by ``token_type_ids`` where the template gives the second text its own type
    (BERT, ELECTRA); otherwise (RoBERTa, XLM-R, DistilBERT, or no ``token_type_ids`` passed) by the number of
    special tokens in the row. A text that itself contains the tokenizer's special tokens literally (e.g.
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
        self.tokenizer = tokenizer
        self._special_ids = set(tokenizer.all_special_ids)
        self.max_length = max_length
        probe = self._encode([next(iter(vocab.values()))])
        single = self._template.post_process(probe, None, add_special_tokens=True)
        pair = self._template.post_process(probe, probe, add_special_tokens=True)
        #: (specials before A, specials after A) of a single text
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


def _as_id_rows(name: str, value) -> list[list[int]] | torch.Tensor:
    """``[B, S]`` int64 tensor or lists of Python ints; floats are refused, never truncated, and so are bools
    except in ``attention_mask`` (where True/False mean 1/0)."""
    mask = name == "attention_mask"
    if isinstance(value, torch.Tensor):
        if value.dim() != 2:
            raise ValueError(f"{name} must be a [batch, seq] tensor, got shape {tuple(value.shape)}")
        if value.dtype not in INTEGER_DTYPES and not (mask and value.dtype == torch.bool):
            raise TypeError(f"{name} must be an integer tensor (torch.long), got dtype {value.dtype}; ids are "
                            "never rounded or cast from floats or bools")
        return value.long().cpu()
    if isinstance(value, Sequence) and all(isinstance(row, Sequence) and not isinstance(row, str) for row in value):
        rows = [list(row) for row in value]
        for row in rows:
            for token in row:
                if not isinstance(token, int) or (isinstance(token, bool) and not mask):
                    raise TypeError(f"{name} must hold Python ints, got {token!r} ({type(token).__name__}); ids are "
                                    "never rounded or cast from floats or bools")
        return rows
    raise TypeError(f"{name} must be a [batch, seq] tensor or a list of lists of ints, got {type(value).__name__}")


def _check_text(text: str, where: str) -> None:
    """Refuse text the tokenizer cannot take: a lone surrogate (invalid Unicode, e.g. from a bad decode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{where} is not valid Unicode (a lone surrogate {text[error.start]!r} at character "
                         f"{error.start}); decode the input with errors='replace' or fix it") from None


def _batch_kind(batch) -> str:
    """``"tokenized"``, ``"pairs"`` or ``"texts"``; refuses anything else with a one-line error."""
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise ValueError(f"a tokenized batch needs 'input_ids'; got keys {sorted(batch)}")
        return "tokenized"
    if isinstance(batch, str) or not isinstance(batch, Sequence):
        raise TypeError(
            f"batch must be a list of strings, a list of (text, text_pair) tuples or a tokenized mapping, "
            f"got {type(batch).__name__}" + (" (wrap a single string in a list)" if isinstance(batch, str) else "")
        )
    if isinstance(batch, tuple) and len(batch) == 2 and all(isinstance(item, str) for item in batch):
        raise ValueError("batch is a tuple of two strings, which reads as two rows and as one pair; pass "
                         "[text, text] for two rows or [(text, text_pair)] for one pair")
    is_pair = [isinstance(item, (tuple, list)) for item in batch]
    if any(is_pair) and not all(is_pair):
        raise ValueError("batch mixes single texts and (text, text_pair) tuples; pass one kind per call")
    return "pairs" if batch and all(is_pair) else "texts"


def num_rows(batch) -> int:
    """Rows in a batch (see :meth:`InputEncoder.encode`); refuses a batch of the wrong type (TypeError/ValueError)."""
    if _batch_kind(batch) == "tokenized":
        return len(batch["input_ids"])
    return len(batch)


class InputEncoder:
    """Checks, truncates and packs batches for one model (see the module docstring).

    Args:
        config: the model's :class:`~costeff_fast.config.CostEffConfig` (vocabulary, type vocabulary, positions).
        tokenizer: its fast tokenizer, or None (then only tokenized mappings are accepted, and a row longer than
            ``max_position_embeddings`` is refused instead of truncated).

    Attributes:
        max_length: :func:`max_length` of the config and tokenizer.
        truncated_rows: rows this encoder has truncated so far (int, a running count: texts whose tokens passed
            ``max_length``, counted with a fast tokenizer, and re-truncated tokenized rows); a caller that wants
            a batch's count takes the difference around its call, as the predict job does.
    """

    def __init__(self, config: CostEffConfig, tokenizer=None):
        self.config = config
        self.tokenizer = tokenizer
        self.max_length = max_length(config, tokenizer)
        self._truncation: TokenTruncation | None = None
        self.truncated_rows = 0

    def chunks(self, batch, rows: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """:meth:`encode` of consecutive pieces of at most ``rows`` rows (default :data:`ROWS_PER_CHUNK`), in order:
        a call over many rows never holds more than one piece's token lists. The batch's type, and for tokenized
        mappings the row counts of every field, are checked before the first piece."""
        rows = ROWS_PER_CHUNK if rows is None else rows
        kind = _batch_kind(batch)
        total = len(batch["input_ids"]) if kind == "tokenized" else len(batch)
        if kind == "tokenized":
            for name in TOKENIZED_FIELDS[1:]:
                if batch.get(name) is not None and len(batch[name]) != total:
                    raise ValueError(f"{name} has {len(batch[name])} rows but input_ids has {total}; pass it with the "
                                     "same lengths as input_ids")
        if total <= rows:
            yield self.encode(batch)
            return
        for start in range(0, total, rows):
            if kind == "tokenized":  # the fields encode reads; any other key of the mapping is ignored, as there
                piece = {name: batch[name][start: start + rows] for name in TOKENIZED_FIELDS
                         if batch.get(name) is not None}
            else:
                piece = list(batch[start: start + rows])  # a tuple slice of two strings would read as a bare pair
            yield self.encode(piece)

    def encode(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Turn a batch into packed token ids.

        Args:
            batch: a list of strings, a list of ``(text, text_pair)`` tuples, or a tokenized mapping with
                ``input_ids`` (``[B, S]`` integer tensor, right-padded, or a list of lists of ints), optional
                ``attention_mask`` and optional ``token_type_ids`` of the same shape.

        Returns:
            ``input_ids [T]``, ``token_type_ids [T]`` (int64, CPU, rows concatenated without padding) and
            ``lengths [B]`` (int64).

        Raises:
            TypeError: the batch or its items are of the wrong type; token ids or type ids that are floats or
                bools (tensors of a non-integer dtype, or list items that are not ints): never rounded.
            ValueError: singles mixed with pairs, tuples that are not pairs, a bare ``(text, text_pair)`` tuple
                instead of a list of them, text that is not valid Unicode (a lone surrogate), an empty row, left
                padding, a tokenized row longer than ``max_length`` without a tokenizer to truncate it, ids
                outside the vocabulary or type ids outside ``[0, type_vocab_size)``.
        """
        kind = _batch_kind(batch)
        if kind == "tokenized":
            return self._encode_tokenized(batch)
        if len(batch) == 0:
            empty = torch.empty(0, dtype=torch.long)
            return empty, empty.clone(), empty.clone()
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass a tokenized mapping with input_ids, or load the "
                             "model from a directory holding tokenizer files (or pass tokenizer=...)")
        if kind == "pairs":
            for index, item in enumerate(batch):
                if len(item) != 2 or not all(isinstance(x, str) for x in item):
                    raise ValueError(f"each pair must be a (text, text_pair) tuple of two strings, got {item!r}")
                _check_text(item[0], f"batch item {index} (text)")
                _check_text(item[1], f"batch item {index} (text_pair)")
            texts, pairs = [item[0] for item in batch], [item[1] for item in batch]
        else:
            for index, item in enumerate(batch):
                if not isinstance(item, str):
                    raise TypeError(f"batch items must be strings or (text, text_pair) tuples, got {type(item).__name__}")
                _check_text(item, f"batch item {index}")
            texts, pairs = list(batch), None
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding=False)
        encodings = getattr(encoded, "encodings", None)  # a fast tokenizer keeps what truncation cut off
        if encodings is not None:
            self.truncated_rows += sum(1 for encoding in encodings if encoding.overflowing)
        return self._encode_tokenized(encoded)

    def _truncator(self) -> TokenTruncation:
        if self._truncation is None:
            self._truncation = TokenTruncation(self.tokenizer, self.max_length)
        return self._truncation

    def _encode_tokenized(self, batch: Mapping):
        ids = _as_id_rows("input_ids", batch["input_ids"])
        optional = {}
        for name in TOKENIZED_FIELDS[1:]:
            if batch.get(name) is not None:
                optional[name] = _as_id_rows(name, batch[name])
        if isinstance(ids, torch.Tensor):
            for name, value in optional.items():
                if not isinstance(value, torch.Tensor) or value.shape != ids.shape:
                    raise ValueError(f"{name} must be a tensor of input_ids' shape {tuple(ids.shape)}")
            mask = optional.get("attention_mask", torch.ones_like(ids))
            lengths = check_right_padded(mask)
            types = optional.get("token_type_ids")
            if len(lengths) and int(lengths.max()) > self.max_length:
                rows = [ids[row, :length].tolist() for row, length in enumerate(lengths.tolist())]
                row_types = None if types is None else [types[row, :length].tolist()
                                                        for row, length in enumerate(lengths.tolist())]
                return self._pack_lists(rows, row_types)
            real = mask.to(torch.bool)
            flat_ids = ids[real]
            flat_types = types[real] if types is not None else torch.zeros_like(flat_ids)
            return self._checked(flat_ids, flat_types, lengths)
        for name, value in optional.items():
            if isinstance(value, torch.Tensor) or [len(row) for row in value] != [len(row) for row in ids]:
                raise ValueError(f"{name} must be lists of the same lengths as input_ids")
        if "attention_mask" in optional and any(0 in row for row in optional["attention_mask"]):
            raise ValueError("with lists of ids pass no padding: attention_mask must be all ones")
        return self._pack_lists(ids, optional.get("token_type_ids"))

    def _pack_lists(self, rows: list[list[int]], row_types: list[list[int]] | None):
        """Pack unpadded rows, truncating those longer than ``max_length`` (:class:`TokenTruncation`)."""
        if any(len(row) > self.max_length for row in rows):
            if self.tokenizer is None:
                longest = max(len(row) for row in rows)
                raise ValueError(
                    f"a row has {longest} tokens, more than max_position_embeddings={self.config.max_position_embeddings}"
                    " and this model has no tokenizer to truncate it with: tokenize with truncation=True, or load "
                    "the model from a directory holding tokenizer files (or pass tokenizer=...)"
                )
            truncate = self._truncator()
            rows, kinds = list(rows), None if row_types is None else list(row_types)
            for index, row in enumerate(rows):
                if len(row) > self.max_length:
                    self.truncated_rows += 1
                    rows[index], new_types = truncate(row, None if kinds is None else kinds[index])
                    if kinds is not None:
                        kinds[index] = new_types
            row_types = kinds
        lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
        flat_ids = torch.tensor([t for row in rows for t in row], dtype=torch.long)
        flat_types = (torch.tensor([t for row in row_types for t in row], dtype=torch.long) if row_types
                      else torch.zeros_like(flat_ids))
        return self._checked(flat_ids, flat_types, lengths)

    def _checked(self, flat_ids: torch.Tensor, flat_types: torch.Tensor, lengths: torch.Tensor):
        config = self.config
        if len(lengths) and int(lengths.min()) < 1:
            raise ValueError("every row needs at least one token ([CLS]); found an empty row")
        if flat_ids.numel() and (int(flat_ids.min()) < 0 or int(flat_ids.max()) >= config.vocab_size):
            raise ValueError(f"input_ids must lie in [0, vocab_size={config.vocab_size})")
        if flat_types.numel() and (int(flat_types.min()) < 0 or int(flat_types.max()) >= config.type_vocab_size):
            raise ValueError(f"token_type_ids must lie in [0, type_vocab_size={config.type_vocab_size})")
        return flat_ids, flat_types, lengths
