"""The user-facing inference model: tokenization, input checks and the early-exit engine behind one call."""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

from .backends import build_backend, check_quantize_target, select_backend
from .checkpoint import load_model, load_tokenizer
from .config import resolve_entropy_threshold
from .engine import run_early_exit, stream_early_exit
from .modeling import INTEGER_DTYPES, CostEffForSequenceClassification, check_right_padded
from .threads import AutoThreads, torch_threads


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
        return value.long()
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


DEFAULT_MAX_BATCH_TOKENS = 16384
"""Real tokens per engine call of :meth:`CostEffInferenceModel.generate_logits`; larger calls are split into
consecutive chunks of rows (a row is never split), so memory stays bounded whatever the batch size."""


def check_num_threads(num_threads) -> None:
    """Refuse a ``num_threads`` that is not ``"auto"``, None or a positive int (ValueError, one line)."""
    if num_threads is None or num_threads == "auto":
        return
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
        raise ValueError(f"num_threads must be 'auto', None or a positive int, got {num_threads!r}")


def _token_chunks(lengths: torch.Tensor, max_tokens: int) -> list[tuple[int, int, int, int]]:
    """Consecutive row chunks of at most ``max_tokens`` real tokens each (a longer row alone): ``(first row, last
    row + 1, first token, last token + 1)`` per chunk; one chunk, possibly empty, when everything fits."""
    sizes = lengths.tolist()
    chunks, first, start, tokens = [], 0, 0, 0
    for row, size in enumerate(sizes):
        if tokens and tokens + size > max_tokens:
            chunks.append((first, row, start, start + tokens))
            first, start, tokens = row, start + tokens, 0
        tokens += size
    chunks.append((first, len(sizes), start, start + tokens))
    return chunks


class CostEffInferenceModel:
    """A COST-EFF checkpoint packed for batch inference with early exit (see :func:`from_pretrained`).

    Args:
        model: the reference model to pack.
        tokenizer: its fast tokenizer, or None (then only tokenized mappings are accepted).
        backend: ``"auto"``, ``"torch"``, ``"native"`` or ``"triton"`` (:func:`~costeff_fast.backends.select_backend`).
        entropy_threshold: this instance's default threshold (nats, float or one per layer), replacing the
            checkpoint's ``config.entropy_threshold``; None keeps the checkpoint's.
        device: torch device for the weights (None: the backend's default).
        max_batch_tokens: real tokens per engine call (default :data:`DEFAULT_MAX_BATCH_TOKENS`); a
            :meth:`generate_logits` call over more is run in consecutive chunks of rows, bounding activation
            memory (``[tokens, hidden]`` and ``[tokens, intermediate]`` buffers) whatever the batch size.
        quantize: None (fp32) or ``"int8"``: the layers' GEMMs in int8 on the CPU (see :func:`from_pretrained`).
        num_threads: torch threads for this instance's CPU calls: ``"auto"`` (default) picks, per call, as many
            as other processes leave cores free, at most ``torch.get_num_threads()`` at construction
            (:class:`~costeff_fast.threads.AutoThreads`); an int runs every call on that many; None leaves
            torch's setting. The previous count is restored after each call. Ignored on CUDA.

    Attributes:
        config: a copy of the model's :class:`~costeff_fast.config.CostEffConfig`, whose ``entropy_threshold``
            is this instance's default.
        tokenizer: the checkpoint's fast tokenizer.
        backend: the :class:`~costeff_fast.backends.base.Backend` running the layers.
        thread_policy: the :class:`~costeff_fast.threads.AutoThreads` of ``num_threads="auto"`` on the CPU, else
            None (set it to None to run at torch's current count).
        num_threads: the fixed count of an int ``num_threads`` on the CPU, else None.

    Raises:
        ValueError / TypeError / RuntimeError: a bad backend, threshold, max_batch_tokens or quantize (see
            ``build_backend`` and :func:`~costeff_fast.config.resolve_entropy_threshold`).
    """

    def __init__(self, model: CostEffForSequenceClassification, tokenizer, backend: str = "auto",
                 entropy_threshold=None, device=None, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 quantize: str | None = None, num_threads: int | str | None = "auto"):
        check_num_threads(num_threads)
        if not isinstance(max_batch_tokens, int) or isinstance(max_batch_tokens, bool) or max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be a positive int, got {max_batch_tokens!r}")
        self.max_batch_tokens = max_batch_tokens
        self.config = copy.deepcopy(model.config)
        if entropy_threshold is not None:
            resolve_entropy_threshold(entropy_threshold, self.config)  # validate before storing it
            self.config.entropy_threshold = entropy_threshold
        self.tokenizer = tokenizer
        self.backend = build_backend(model, backend, device, quantize=quantize)
        limits = [model.config.max_position_embeddings]
        if tokenizer is not None and tokenizer.model_max_length:
            limits.append(int(min(tokenizer.model_max_length, 1 << 30)))
        self.max_length = min(limits)
        on_cpu = self.backend.device.type == "cpu"
        self.thread_policy = AutoThreads() if num_threads == "auto" and on_cpu else None
        self.num_threads = num_threads if on_cpu and isinstance(num_threads, int) else None

    def _call_threads(self) -> int | None:
        """The torch thread count for a call starting now (None: leave torch's setting)."""
        return self.thread_policy.threads() if self.thread_policy is not None else self.num_threads

    @property
    def entropy_threshold(self) -> list[float]:
        """The default threshold of this instance, one float per layer (nats)."""
        return resolve_entropy_threshold(None, self.config)

    def encode(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Turn a batch into packed token ids.

        Args:
            batch: a list of strings, a list of ``(text, text_pair)`` tuples, or a tokenized mapping with
                ``input_ids`` (``[B, S]`` tensor, right-padded, or a list of lists of ints), optional
                ``attention_mask`` and optional ``token_type_ids`` of the same shape.

        Returns:
            ``input_ids [T]``, ``token_type_ids [T]`` (int64, rows concatenated without padding) and
            ``lengths [B]`` (int64).

        Raises:
            TypeError: the batch or its items are of the wrong type; token ids or type ids that are floats or
                bools (tensors of a non-integer dtype, or list items that are not ints): never rounded.
            ValueError: singles mixed with pairs, tuples that are not pairs, a bare ``(text, text_pair)`` tuple
                instead of a list of them, text that is not valid Unicode (a
                lone surrogate), an empty row, left padding, a row longer than the model's
                ``max_position_embeddings``, ids outside the vocabulary.
        """
        if isinstance(batch, Mapping):
            return self._encode_tokenized(batch)
        if isinstance(batch, str) or not isinstance(batch, Sequence):
            raise TypeError(
                f"batch must be a list of strings, a list of (text, text_pair) tuples or a tokenized mapping, "
                f"got {type(batch).__name__}" + (" (wrap a single string in a list)" if isinstance(batch, str) else "")
            )
        if isinstance(batch, tuple) and len(batch) == 2 and all(isinstance(item, str) for item in batch):
            raise ValueError("batch is a tuple of two strings, which reads as two rows and as one pair; pass "
                             "[text, text] for two rows or [(text, text_pair)] for one pair")
        if len(batch) == 0:
            return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass a tokenized mapping with input_ids")
        is_pair = [isinstance(item, (tuple, list)) for item in batch]
        if any(is_pair) and not all(is_pair):
            raise ValueError("batch mixes single texts and (text, text_pair) tuples; pass one kind per call")
        if all(is_pair):
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
        return self._encode_tokenized(encoded)

    def _encode_tokenized(self, batch: Mapping):
        if "input_ids" not in batch:
            raise ValueError(f"a tokenized batch needs 'input_ids'; got keys {sorted(batch)}")
        ids = _as_id_rows("input_ids", batch["input_ids"])
        optional = {}
        for name in ("attention_mask", "token_type_ids"):
            if batch.get(name) is not None:
                optional[name] = _as_id_rows(name, batch[name])
        if isinstance(ids, torch.Tensor):
            for name, value in optional.items():
                if not isinstance(value, torch.Tensor) or value.shape != ids.shape:
                    raise ValueError(f"{name} must be a tensor of input_ids' shape {tuple(ids.shape)}")
            mask = optional.get("attention_mask", torch.ones_like(ids))
            lengths = check_right_padded(mask)
            real = mask.to(torch.bool)
            flat_ids = ids[real]
            flat_types = optional["token_type_ids"][real] if "token_type_ids" in optional else torch.zeros_like(flat_ids)
        else:
            lengths = torch.tensor([len(row) for row in ids], dtype=torch.long)
            for name, value in optional.items():
                if isinstance(value, torch.Tensor) or [len(row) for row in value] != lengths.tolist():
                    raise ValueError(f"{name} must be lists of the same lengths as input_ids")
            if "attention_mask" in optional:
                if any(0 in row for row in optional["attention_mask"]):
                    raise ValueError("with lists of ids pass no padding: attention_mask must be all ones")
            flat_ids = torch.tensor([t for row in ids for t in row], dtype=torch.long)
            types = optional.get("token_type_ids")
            flat_types = (
                torch.tensor([t for row in types for t in row], dtype=torch.long) if types else torch.zeros_like(flat_ids)
            )
        if len(lengths) and int(lengths.min()) < 1:
            raise ValueError("every row needs at least one token ([CLS]); found an empty row")
        if len(lengths) and int(lengths.max()) > self.config.max_position_embeddings:
            raise ValueError(
                f"a row has {int(lengths.max())} tokens, more than max_position_embeddings="
                f"{self.config.max_position_embeddings}; truncate it"
            )
        if flat_ids.numel() and (int(flat_ids.min()) < 0 or int(flat_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"input_ids must lie in [0, vocab_size={self.config.vocab_size})")
        if flat_types.numel() and (int(flat_types.min()) < 0 or int(flat_types.max()) >= self.config.type_vocab_size):
            raise ValueError(f"token_type_ids must lie in [0, type_vocab_size={self.config.type_vocab_size})")
        return flat_ids, flat_types, lengths

    @torch.inference_mode()
    def generate_logits(self, batch, *, entropy_threshold=None, return_exit_layers: bool = False):
        """Classify a batch with batch-level early exit.

        Args:
            batch: see :meth:`encode`.
            entropy_threshold: nats, a float or one float per layer; None uses this instance's default (the
                ``entropy_threshold`` given to :func:`from_pretrained`, else the checkpoint's calibrated one). A row answers at the first layer whose exit entropy is
                below the threshold; the last layer always answers. ``0.0`` disables early exit
                (:func:`~costeff_fast.config.resolve_entropy_threshold`). Entropy lies in ``[0, ln C]`` for C
                classes (0.693 for two), so a threshold above ``ln C`` sends every row out at layer 1; it is not a
                probability.
            return_exit_layers: also return each row's 1-based exit layer.

        Returns:
            ``logits [B, num_labels]`` fp32 in input order, and with ``return_exit_layers`` a tuple
            ``(logits, exit_layer [B] int64)``. An empty batch gives ``[0, num_labels]`` and ``[0]``.

        Raises:
            TypeError / ValueError: bad batch (see :meth:`encode`) or threshold (negative, wrong length).
        """
        tau = resolve_entropy_threshold(entropy_threshold, self.config)
        input_ids, token_type_ids, lengths = self.encode(batch)
        outputs = []
        for first, last, start, stop in _token_chunks(lengths, self.max_batch_tokens):
            with torch_threads(self._call_threads()):  # per chunk, so a long call follows the load
                outputs.append(run_early_exit(self.backend, input_ids[start:stop], token_type_ids[start:stop],
                                              lengths[first:last], tau))
        if len(outputs) == 1:
            logits, exit_layer = outputs[0]
        else:
            logits, exit_layer = (torch.cat([output[i] for output in outputs]) for i in (0, 1))
        logits, exit_layer = logits.cpu(), exit_layer.cpu()
        return (logits, exit_layer) if return_exit_layers else logits

    def generate_logits_stream(
        self, items: Iterable, batch_size: int = 64, *, entropy_threshold=None
    ) -> Iterator[tuple[int, torch.Tensor, int]]:
        """Classify an iterable of any length with early exit, keeping every layer's batch near ``batch_size``.

        Rows that leave early are replaced by new input rows (one queue per layer,
        :func:`~costeff_fast.engine.stream_early_exit`). Input is read and tokenized ``batch_size`` items at
        a time, only when the first layer needs more rows; at most about ``2 * batch_size * num_layers``
        rows are held at once. Each row gets the same exit layer and logits as :meth:`generate_logits`
        (up to fp32 rounding from a different batch composition).

        Args:
            items: strings, or ``(text, text_pair)`` tuples (one kind per ``batch_size`` chunk), e.g. a
                generator over a file.
            batch_size: rows per layer call (int >= 1).
            entropy_threshold: as in :meth:`generate_logits`.

        Yields:
            ``(index, logits, exit_layer)`` per row: ``index`` (int) is the row's position in ``items``,
            ``logits [num_labels]`` fp32 on the CPU, ``exit_layer`` the 1-based layer that answered (int).
            Rows come out when they finish, not in input order.

        Raises:
            ValueError: ``batch_size`` is not a positive int or a bad threshold (both at the call), or a bad
                item (as :meth:`encode`, when its chunk is read).
            TypeError: ``items`` is a string or a mapping, or an item of the wrong type (when read).
        """
        if isinstance(items, (str, Mapping)) or not isinstance(items, Iterable):
            raise TypeError(
                f"items must be an iterable of strings or (text, text_pair) tuples, got {type(items).__name__}"
            )
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        tau = resolve_entropy_threshold(entropy_threshold, self.config)
        iterator = iter(items)
        chunks = (self.encode(chunk) for chunk in iter(lambda: list(itertools.islice(iterator, batch_size)), []))

        def rows() -> Iterator[tuple[int, torch.Tensor, int]]:
            steps = stream_early_exit(self.backend, chunks, batch_size, tau)
            while True:  # the thread count is set around each step, so code between yields keeps its own
                with torch.inference_mode(), torch_threads(self._call_threads()):
                    step = next(steps, None)
                if step is None:
                    return
                row_ids, logits, exit_layer = step
                yield from ((index, row, exit_layer) for index, row in zip(row_ids.tolist(), logits))

        return rows()

    def predict(self, batch, *, entropy_threshold=None) -> torch.Tensor:
        """Label ids ``[B]`` int64: the argmax of :meth:`generate_logits` (same arguments and errors)."""
        return self.generate_logits(batch, entropy_threshold=entropy_threshold).argmax(dim=-1)


def from_pretrained(
    path: str | os.PathLike,
    entropy_threshold=None,
    backend: str = "auto",
    num_threads: int | str | None = "auto",
    device=None,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    quantize: str | None = None,
) -> CostEffInferenceModel:
    """Load a COST-EFF checkpoint directory and pack it for fast inference.

    Args:
        path: a directory written by ``CostEffForSequenceClassification.save_pretrained`` (``config.json``,
            ``model.safetensors``, tokenizer files).
        entropy_threshold: default threshold (nats, float or one per layer); None uses the checkpoint's
            calibrated ``config.entropy_threshold`` (0.0, full depth, when it has none).
        backend: ``"auto"`` (``"triton"`` on a CUDA GPU, ``"native"`` on the CPU when the native kernels
            build, else ``"torch"``; one log line says which and why), ``"torch"`` (the reference path, any
            device), ``"native"`` (C++ kernels, fp32 CPU) or ``"triton"`` (CUDA).
        num_threads: CPU threads of the engine's calls: ``"auto"`` (default) chooses per call as many as other
            processes leave cores free, at most torch's count now (:mod:`costeff_fast.threads`: with one core
            busy elsewhere, 2 threads ran slower than 1); an int fixes it (``torch.set_num_threads``, also set
            process-wide now, as before); None leaves torch's setting. A different count changes the fp32
            summation order, so with ``"auto"`` two calls on the same rows agree to rounding (about 1e-7), not
            bit for bit; pass an int where bitwise repeatability matters.
        device: torch device for the weights (None: the backend's default: CUDA with fp16 storage for
            ``"triton"``, else the CPU).
        max_batch_tokens: real tokens per engine call; larger :meth:`~CostEffInferenceModel.generate_logits`
            calls run in chunks (:class:`CostEffInferenceModel`).
        quantize: None (fp32) or ``"int8"``: quantize each layer's four GEMM weights (QKV, attention output,
            FFN in and out) to int8 per output channel at load time and run them with dynamically quantized
            int8 activations (torch's fbgemm kernels, CPU only; ``backend`` ``"auto"``, ``"native"`` or
            ``"torch"``). Embeddings, attention, LayerNorms and exits stay fp32; a row exits when the entropy of
            the int8 model's own logits is below the threshold. Logits differ from fp32 by the rounding
            (:class:`~costeff_fast.packing.Int8Weight`, docs/design.md, Backends).

    Returns:
        A :class:`CostEffInferenceModel`.

    Raises:
        FileNotFoundError: ``path`` is not a directory with a ``config.json``, or it has no ``model.safetensors``
            (weights are read from safetensors only).
        CheckpointError: (a ``ValueError``, :mod:`costeff_fast.checkpoint`) naming the file and the field or
            tensors: a config that is not JSON, of another ``model_type`` or with a bad field; weights that are
            truncated, corrupt, missing, unexpected, mis-shaped or not finite; tokenizer files that cannot be
            loaded or a vocabulary larger than ``vocab_size``.
        ValueError: a bad backend, threshold or thread count; ``quantize`` other than None/``"int8"``, or
            ``"int8"`` with ``backend="triton"`` or a non-CPU device (refused before anything is loaded).
        RuntimeError: ``backend="native"`` where the kernels cannot be built, ``"triton"`` without CUDA,
            ``quantize="int8"`` in a torch build without its int8 CPU kernels.
    """
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} has no config.json; pass a directory written by save_pretrained")
    select_backend(backend, device)
    check_quantize_target(quantize, backend, device)
    check_num_threads(num_threads)
    if isinstance(num_threads, int):
        torch.set_num_threads(num_threads)
    model = load_model(directory)
    tokenizer = load_tokenizer(directory, model.config)
    return CostEffInferenceModel(model, tokenizer, backend=backend, entropy_threshold=entropy_threshold, device=device,
                                 max_batch_tokens=max_batch_tokens, quantize=quantize, num_threads=num_threads)
