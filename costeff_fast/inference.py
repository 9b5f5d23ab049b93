"""The one user-facing model: a Hugging Face ``PreTrainedModel`` whose every call runs the packed early-exit engine.

:class:`CostEffEngineForSequenceClassification` is what :func:`from_pretrained`, the Auto classes
(``AutoModelForSequenceClassification``), ``pipeline("text-classification")`` and :func:`costeff_fast.optimize`
return. Its weights are those of the trainable reference model
(:class:`~costeff_fast.modeling.CostEffForSequenceClassification`, same parameter names, same checkpoint files),
packed once for a backend (:mod:`costeff_fast.backends`) and re-packed when they, the device or the engine options
change. Inputs go through :mod:`costeff_fast.inputs`; the loop is :mod:`costeff_fast.engine`.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from .backends import Backend, build_backend, check_quantize_target, select_backend
from .checkpoint import load_model, load_tokenizer
from .config import resolve_entropy_threshold
from .engine import run_early_exit, stream_early_exit
from .inputs import InputEncoder, num_rows
from .modeling import INTEGER_DTYPES, CostEffClassifierOutput, CostEffForSequenceClassification
from .threads import AutoThreads, check_num_threads, torch_threads

DEFAULT_MAX_BATCH_TOKENS = 16384
"""Real tokens per engine call; larger calls run in consecutive chunks of rows (a row is never split), so memory
stays bounded whatever the batch size."""

#: keyword arguments of :meth:`CostEffEngineForSequenceClassification.from_pretrained` that set the engine
ENGINE_OPTIONS = ("entropy_threshold", "backend", "num_threads", "device", "max_batch_tokens", "quantize")

#: Hugging Face loading arguments that only say where to find files (hub cache, revision, ...): meaningless for a
#: local directory, accepted and ignored there
_HUB_ONLY = frozenset({
    "cache_dir", "force_download", "proxies", "resume_download", "local_files_only", "token", "revision",
    "subfolder", "trust_remote_code", "_from_auto", "_from_pipeline", "_commit_hash", "code_revision",
    "use_safetensors", "low_cpu_mem_usage", "attn_implementation", "adapter_kwargs",
})

_KEEP = object()

#: parameter registrations seen in this process (any module): a model re-lists its parameters only when this moved
_REGISTRATIONS = [0]


def _count_registration(module, name, parameter) -> None:
    _REGISTRATIONS[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_count_registration)


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


def check_engine_options(backend, quantize, num_threads, max_batch_tokens, device=None) -> None:
    """Refuse, in one line and before anything is loaded, options the engine cannot run (ValueError/RuntimeError)."""
    select_backend(backend, device)
    if backend == "native" and device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"backend='native' runs on the CPU (C++ kernels), got device {device}; use "
                         "backend='torch' or 'triton', or keep the model on the CPU")
    check_quantize_target(quantize, backend, device)
    check_num_threads(num_threads)
    if not isinstance(max_batch_tokens, int) or isinstance(max_batch_tokens, bool) or max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be a positive int, got {max_batch_tokens!r}")


class CostEffEngineForSequenceClassification(CostEffForSequenceClassification):
    """A COST-EFF classifier whose calls run the packed, padding-free early-exit engine (COST-EFF, Shen et al.,
    EMNLP 2022, Sec. 3.4: each row answers at its first exit whose entropy is below the threshold).

    A ``transformers.PreTrainedModel``: ``model(**tokenizer(texts, padding=True, return_tensors="pt"))`` returns a
    :class:`~costeff_fast.modeling.CostEffClassifierOutput`; ``save_pretrained`` (config, weights and tokenizer),
    ``push_to_hub``, ``.to(device)`` and ``pipeline`` work as for any Hugging Face classifier. Training mode changes
    nothing: the engine has no dropout and no gradient; train with the reference model
    :class:`~costeff_fast.modeling.CostEffForSequenceClassification` (same weights, same files), which is also the
    oracle every engine output is checked against.

    Build it with :func:`from_pretrained`, :meth:`from_model` or :func:`costeff_fast.optimize`. The packed copy of
    the weights (about their size again) is made when the model is built and remade at the next call after a
    parameter changed (moved, loaded or edited in place) or :meth:`configure_engine` changed ``backend`` or
    ``quantize``. The engine runs where the weights are (int8: on the CPU, outputs moved to the weights' device).

    Attributes:
        tokenizer: the checkpoint's fast tokenizer, or None (then only tokenized inputs are accepted, and a
            tokenized row longer than ``max_position_embeddings`` is refused instead of truncated).
        backend: the :class:`~costeff_fast.backends.base.Backend` running the layers (packing it if needed).
        thread_policy: the :class:`~costeff_fast.threads.AutoThreads` of ``num_threads="auto"`` (used on the CPU),
            else None (set it to None to run at torch's current count).
        max_length: the longest row in tokens, special tokens included (:func:`costeff_fast.inputs.max_length`).
        entropy_threshold: this model's default threshold, one float per layer (nats), from
            ``config.entropy_threshold``.
    """

    def __init__(self, config):
        super().__init__(config)
        self.tokenizer = None
        self.engine_options = {"backend": "auto", "quantize": None, "num_threads": "auto",
                               "max_batch_tokens": DEFAULT_MAX_BATCH_TOKENS}
        self._backend: Backend | None = None
        self._backend_key = None
        self._parameter_list: tuple[list[torch.nn.Parameter], int] | None = None
        self.thread_policy: AutoThreads | None = AutoThreads()
        self._inputs: InputEncoder | None = None

    # ----------------------------------------------------------------------------------------------- building
    @classmethod
    def from_model(cls, model: CostEffForSequenceClassification, tokenizer=None, *, backend: str = "auto",
                   entropy_threshold=None, device=None, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                   quantize: str | None = None, num_threads: int | str | None = "auto",
                   ) -> "CostEffEngineForSequenceClassification":
        """The engine model of a reference model, sharing its weights (no copy; an in-place edit of ``model``'s
        weights is seen at the next call) and packed now.

        Args:
            model: a :class:`~costeff_fast.modeling.CostEffForSequenceClassification` (any dtype and device).
            tokenizer: its fast tokenizer, or None.
            backend, entropy_threshold, device, max_batch_tokens, quantize, num_threads: see :func:`from_pretrained`.
                ``device`` moves the weights there (a copy when it differs from ``model``'s device).

        Raises:
            ValueError / RuntimeError: a bad option (see :func:`from_pretrained`), checked before packing.
        """
        check_engine_options(backend, quantize, num_threads, max_batch_tokens, device)
        config = copy.deepcopy(model.config)
        if entropy_threshold is not None:
            config.entropy_threshold = entropy_threshold
        resolve_entropy_threshold(None, config)  # validate before packing (also one the Auto classes set)
        if device is None and quantize is None and torch.cuda.is_available() \
                and select_backend(backend, None)[0] == "triton":
            device = "cuda"  # the engine runs where the weights are: triton's are on the GPU
        with torch.device("meta"):  # no random initialisation: every tensor is assigned from the model
            engine = cls(config)
        engine.load_state_dict(model.state_dict(), strict=True, assign=True)
        engine.eval()
        engine.tokenizer = tokenizer
        if device is not None:
            engine.to(device)
        engine.configure_engine(backend=backend, quantize=quantize, num_threads=num_threads,
                                max_batch_tokens=max_batch_tokens)
        engine.backend  # noqa: B018  (pack now: a backend that cannot run fails here, and its log line shows)
        return engine

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a checkpoint: a local directory strictly, as :func:`costeff_fast.from_pretrained` (which calls this),
        anything else through ``PreTrainedModel.from_pretrained``; then pack it.

        Args:
            pretrained_model_name_or_path: a directory written by ``save_pretrained`` (or a hub id).
            **kwargs: the engine options of :func:`from_pretrained` (``entropy_threshold``, ``backend``,
                ``num_threads``, ``device``, ``max_batch_tokens``, ``quantize``); ``config`` (a
                :class:`~costeff_fast.config.CostEffConfig` used instead of the directory's, as the Auto classes
                pass it); ``dtype``/``torch_dtype`` (``"auto"`` or a float dtype the weights are cast to);
                Hugging Face's hub arguments (``revision``, ``cache_dir`` ...), ignored for a local directory.

        Raises:
            FileNotFoundError: a local directory without ``config.json`` or ``model.safetensors`` (a
                ``pytorch_model.bin`` is never loaded).
            CheckpointError: a config field, weight file or tensor that cannot serve the model (missing,
                unexpected, of another shape, NaN or inf), tokenizer files that cannot be loaded, or a tokenizer
                larger than the vocabulary.
            ValueError: a bad engine option, or an argument a local COST-EFF checkpoint cannot honour
                (``state_dict``, ``output_loading_info``, ``device_map`` other than one device ...).
        """
        options = {name: kwargs.pop(name) for name in ENGINE_OPTIONS if name in kwargs}
        directory = Path(pretrained_model_name_or_path) / kwargs.get("subfolder", "")
        if not directory.is_dir():
            loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
            return cls.from_model(loaded, getattr(loaded, "tokenizer", None), **options)
        config = kwargs.pop("config", None)
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        device_map = kwargs.pop("device_map", None)
        if isinstance(device_map, int) and not isinstance(device_map, bool):
            device_map = f"cuda:{device_map}"
        if device_map is not None:
            if not isinstance(device_map, (str, torch.device)) or str(device_map) == "auto":
                raise ValueError(f"device_map={device_map!r}: a COST-EFF model runs on one device; pass "
                                 "device='cpu' or device='cuda'")
            options.setdefault("device", device_map)
        refused = sorted(name for name, value in kwargs.items()
                         if name not in _HUB_ONLY and value not in (None, False))
        if model_args or refused:
            raise ValueError(f"{', '.join(refused) or 'positional model arguments'}: not supported when loading a "
                             "COST-EFF checkpoint; pass the engine options "
                             f"({', '.join(ENGINE_OPTIONS)}) by keyword")
        check = {name: options.get(name, default) for name, default in (
            ("backend", "auto"), ("quantize", None), ("num_threads", "auto"),
            ("max_batch_tokens", DEFAULT_MAX_BATCH_TOKENS), ("device", None))}
        check_engine_options(**check)
        model = load_model(directory, config)
        if dtype not in (None, "auto"):
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                raise ValueError(f"dtype must be 'auto' or a float torch.dtype, got {dtype!r}")
            model = model.to(dtype)
        tokenizer = load_tokenizer(directory, model.config)
        return cls.from_model(model, tokenizer, **options)

    def configure_engine(self, *, backend=_KEEP, quantize=_KEEP, num_threads=_KEEP, max_batch_tokens=_KEEP) -> None:
        """Change engine options (only those given); the weights are re-packed at the next call when needed.

        Args:
            backend: ``"auto"``, ``"torch"``, ``"native"`` or ``"triton"`` (:func:`from_pretrained`).
            quantize: None or ``"int8"``.
            num_threads: ``"auto"``, an int or None.
            max_batch_tokens: real tokens per engine call (int >= 1).

        Raises:
            ValueError / RuntimeError: as :func:`from_pretrained` (``"native"`` on weights outside the CPU
                included), before anything changes.
        """
        options = dict(self.engine_options)
        for name, value in (("backend", backend), ("quantize", quantize), ("num_threads", num_threads),
                            ("max_batch_tokens", max_batch_tokens)):
            if value is not _KEEP:
                options[name] = value
        device = "cpu" if options["quantize"] is not None else self.device
        check_engine_options(options["backend"], options["quantize"], options["num_threads"],
                             options["max_batch_tokens"], device)
        if num_threads is not _KEEP:
            self.thread_policy = AutoThreads() if options["num_threads"] == "auto" else None
        self.engine_options = options

    @property
    def backend(self) -> Backend:
        """The packed backend, re-packed when the weights, their device or the engine options changed."""
        options = self.engine_options
        if self._parameter_list is None or self._parameter_list[1] != _REGISTRATIONS[0]:
            self._parameter_list = (list(self.parameters()), _REGISTRATIONS[0])  # walk the modules only when needed
        parameters = self._parameter_list[0]
        key = (options["backend"], options["quantize"],
               [(p.data_ptr(), p._version, p.dtype, p.device) for p in parameters])
        if self._backend is None or key != self._backend_key:
            device = "cpu" if options["quantize"] is not None else self.device  # int8 GEMMs are the CPU's
            with torch.no_grad():
                self._backend = build_backend(self, options["backend"], device, quantize=options["quantize"])
            self._backend_key = key
        return self._backend

    def _call_threads(self, backend: Backend) -> int | None:
        """The torch thread count for a call starting now on ``backend`` (None: leave torch's setting)."""
        if backend.device.type != "cpu":
            return None
        if self.thread_policy is not None:
            return self.thread_policy.threads()
        threads = self.engine_options["num_threads"]
        return threads if isinstance(threads, int) else None

    @property
    def inputs(self) -> InputEncoder:
        """The :class:`~costeff_fast.inputs.InputEncoder` of this model and its current tokenizer."""
        if self._inputs is None or self._inputs.tokenizer is not self.tokenizer or self._inputs.config is not self.config:
            self._inputs = InputEncoder(self.config, self.tokenizer)
        return self._inputs

    def encode(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(input_ids [T], token_type_ids [T], lengths [B])`` int64: the batch checked, truncated and packed as
        :meth:`generate_logits` runs it (:meth:`costeff_fast.inputs.InputEncoder.encode`, same errors)."""
        return self.inputs.encode(batch)

    @property
    def max_length(self) -> int:
        return self.inputs.max_length

    @property
    def entropy_threshold(self) -> list[float]:
        return resolve_entropy_threshold(None, self.config)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained`` (config, with this model's ``entropy_threshold``, and
        ``model.safetensors``), plus the tokenizer's files when the model has one: the directory loads back with
        :func:`from_pretrained` to bit-identical weights and outputs. Engine options (``backend``, ``quantize``,
        ``num_threads``, ``max_batch_tokens``) are not saved; pass them again when loading (the weights stay fp32
        with ``quantize="int8"``)."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)
        return result

    # ------------------------------------------------------------------------------------------------ calling
    @torch.inference_mode()
    def generate_logits(self, batch, *, entropy_threshold=None, return_exit_layers: bool = False):
        """Classify a batch with batch-level early exit.

        Args:
            batch: a list of strings, a list of ``(text, text_pair)`` tuples, or a tokenized mapping with
                ``input_ids`` (``[B, S]`` integer tensor, right-padded, or lists of ints), optional
                ``attention_mask`` and ``token_type_ids`` (:meth:`costeff_fast.inputs.InputEncoder.encode`). Text is
                truncated to :attr:`max_length`, and so is a tokenized row when the model has a tokenizer.
            entropy_threshold: nats, a float or one float per layer; None uses this model's default
                (``config.entropy_threshold``: the ``entropy_threshold`` given at load time, else the checkpoint's
                calibrated one). A row answers at the first layer whose exit entropy is below the threshold; the
                last layer always answers. ``0.0`` disables early exit
                (:func:`~costeff_fast.config.resolve_entropy_threshold`). Entropy lies in ``[0, ln C]`` for C
                classes (0.693 for two), so a threshold above ``ln C`` sends every row out at layer 1; it is not a
                probability.
            return_exit_layers: also return each row's 1-based exit layer.

        Returns:
            ``logits [B, num_labels]`` fp32 on the CPU, in input order, and with ``return_exit_layers`` a tuple
            ``(logits, exit_layer [B] int64)``. An empty batch gives ``[0, num_labels]`` and ``[0]``. Rows are
            tokenized and run :data:`~costeff_fast.inputs.ROWS_PER_CHUNK` at a time and at most
            ``max_batch_tokens`` real tokens per engine call, so memory beyond the outputs does not grow with B.

        Raises:
            TypeError / ValueError: a bad batch (:meth:`~costeff_fast.inputs.InputEncoder.encode`) or threshold
                (negative, wrong length).
        """
        tau = resolve_entropy_threshold(entropy_threshold, self.config)
        backend = self.backend
        total = num_rows(batch)
        logits = torch.empty(total, self.config.num_labels, dtype=torch.float32)
        exit_layer = torch.empty(total, dtype=torch.long)
        offset, max_tokens = 0, self.engine_options["max_batch_tokens"]
        for input_ids, token_type_ids, lengths in self.inputs.chunks(batch):
            for first, last, start, stop in _token_chunks(lengths, max_tokens):
                with torch_threads(self._call_threads(backend)):  # per chunk, so a long call follows the load
                    chunk_logits, chunk_exits = run_early_exit(
                        backend, input_ids[start:stop], token_type_ids[start:stop], lengths[first:last], tau)
                logits[offset + first: offset + last] = chunk_logits.cpu()
                exit_layer[offset + first: offset + last] = chunk_exits.cpu()
            offset += len(lengths)
        return (logits, exit_layer) if return_exit_layers else logits

    def generate_logits_stream(
        self, items: Iterable, batch_size: int = 64, *, entropy_threshold=None
    ) -> Iterator[tuple[int, torch.Tensor, int]]:
        """Classify an iterable of any length with early exit, keeping every layer's batch near ``batch_size``.

        Rows that leave early are replaced by new input rows (one queue per layer,
        :func:`~costeff_fast.engine.stream_early_exit`). Input is read and tokenized ``batch_size`` items at a
        time, only when the first layer needs more rows; at most about ``2 * batch_size * num_layers`` rows are
        held at once. Each row gets the same exit layer and logits as :meth:`generate_logits` (up to fp32 rounding
        from a different batch composition).

        Args:
            items: strings, or ``(text, text_pair)`` tuples (one kind per ``batch_size`` chunk), e.g. a generator
                over a file.
            batch_size: rows per layer call (int >= 1).
            entropy_threshold: as in :meth:`generate_logits`.

        Yields:
            ``(index, logits, exit_layer)`` per row: ``index`` (int) is the row's position in ``items``,
            ``logits [num_labels]`` fp32 on the CPU, ``exit_layer`` the 1-based layer that answered (int). Rows come
            out when they finish, not in input order.

        Raises:
            ValueError: ``batch_size`` is not a positive int or a bad threshold (both at the call), or a bad item
                (as :meth:`generate_logits`, when its chunk is read).
            TypeError: ``items`` is a string or a mapping, or an item of the wrong type (when read).
        """
        if isinstance(items, (str, Mapping)) or not isinstance(items, Iterable):
            raise TypeError(
                f"items must be an iterable of strings or (text, text_pair) tuples, got {type(items).__name__}"
            )
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        tau = resolve_entropy_threshold(entropy_threshold, self.config)
        backend, inputs = self.backend, self.inputs
        iterator = iter(items)
        chunks = (inputs.encode(chunk) for chunk in iter(lambda: list(itertools.islice(iterator, batch_size)), []))

        def rows() -> Iterator[tuple[int, torch.Tensor, int]]:
            steps = stream_early_exit(backend, chunks, batch_size, tau)
            while True:  # the thread count is set around each step, so code between yields keeps its own
                with torch.inference_mode(), torch_threads(self._call_threads(backend)):
                    step = next(steps, None)
                if step is None:
                    return
                row_ids, logits, exit_layer = step
                yield from ((index, row, exit_layer) for index, row in zip(row_ids.tolist(), logits))

        return rows()

    def predict(self, batch, *, entropy_threshold=None) -> torch.Tensor:
        """Label ids ``[B]`` int64: the argmax of :meth:`generate_logits` (same arguments and errors)."""
        return self.generate_logits(batch, entropy_threshold=entropy_threshold).argmax(dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        entropy_threshold: float | list[float] | None = None,
        **kwargs,
    ) -> CostEffClassifierOutput | tuple[torch.Tensor, ...]:
        """Classify a tokenized batch with the engine, as a Hugging Face classifier's ``forward`` is called.

        Args:
            input_ids: ``[B, S]`` integer token ids, right-padded; a row longer than :attr:`max_length` is truncated
                as the tokenizer would have (``pipeline`` tokenizes without truncation), or refused without a
                tokenizer.
            attention_mask: ``[B, S]``, ones then zeros in each row (default all ones).
            token_type_ids: ``[B, S]`` segment ids (default zeros).
            labels: ``[B]`` integer class ids: the output's ``loss`` is their mean cross-entropy against the
                answering exits' logits, for evaluation. It has no gradient: in training mode with gradients
                enabled (a fine-tuning loop) labels are refused; fine-tune the reference model instead.
            return_dict: False returns a tuple (``(loss, logits, exit_layer)``, loss only when labels are given).
            entropy_threshold: nats, a float or one per layer; None: this model's default.
            **kwargs: ``use_cache`` and arguments left at None/False are accepted for signature compatibility.

        Returns:
            :class:`~costeff_fast.modeling.CostEffClassifierOutput` with ``logits [B, num_labels]`` fp32 of each
            row's exit and ``exit_layer [B]`` int64 (1-based), on the model's device (``exit_logits`` None).

        Raises:
            TypeError: float token ids, mask or type ids (never rounded); labels that are not integers.
            ValueError: left padding, an empty row, ids outside the vocabulary, a bad threshold, an over-long row
                without a tokenizer or whose texts cannot be recovered, labels of another shape or outside
                ``[0, num_labels)``, or an argument the engine does not compute (``output_hidden_states``,
                ``output_exit_logits``, ``inputs_embeds``, ...: the message names the reference model that does).
        """
        given = sorted(name for name, value in kwargs.items()
                       if value is not None and value is not False and name != "use_cache")
        if given:
            raise ValueError(f"{', '.join(given)}: not supported by the COST-EFF engine; pass input_ids, "
                             "attention_mask and token_type_ids, or run the reference model "
                             "costeff_fast.CostEffForSequenceClassification for hidden states and every exit")
        if input_ids is None:
            raise ValueError("input_ids is required: pass the tokenizer's output, model(**tokenizer(texts, "
                             "padding=True, return_tensors='pt'))")
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a [batch, seq] LongTensor, got {getattr(input_ids, 'shape', input_ids)}")
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        logits, exit_layer = self.generate_logits(batch, entropy_threshold=entropy_threshold, return_exit_layers=True)
        # outside inference mode: ordinary tensors the caller may use in autograd code
        logits, exit_layer = logits.clone().to(self.device), exit_layer.clone().to(self.device)
        loss = None
        if labels is not None and self.training and torch.is_grad_enabled():
            raise ValueError("labels in training mode: the engine computes no gradient; fine-tune the reference "
                             "model (costeff_fast.CostEffForSequenceClassification, AutoModel.from_pretrained(dir)) "
                             "on the same weights, or call model.eval() / torch.no_grad() to evaluate the loss")
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.dtype not in INTEGER_DTYPES:
                raise TypeError(f"labels must be an integer tensor of class ids, got {getattr(labels, 'dtype', labels)}")
            if labels.shape != (input_ids.shape[0],) or (labels.numel() and (
                    int(labels.min()) < 0 or int(labels.max()) >= self.config.num_labels)):
                raise ValueError(f"labels must be [{input_ids.shape[0]}] class ids in [0, {self.config.num_labels}), "
                                 f"got shape {tuple(labels.shape)}")
            loss = F.cross_entropy(logits, labels.to(logits.device).long())
        output = CostEffClassifierOutput(loss=loss, logits=logits, exit_layer=exit_layer)
        return output if return_dict is not False else output.to_tuple()


def from_pretrained(
    path: str | os.PathLike,
    entropy_threshold=None,
    backend: str = "auto",
    num_threads: int | str | None = "auto",
    device=None,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    quantize: str | None = None,
) -> CostEffEngineForSequenceClassification:
    """Load a COST-EFF checkpoint directory and pack it for fast inference.

    Args:
        path: a directory written by ``save_pretrained`` (``config.json``, ``model.safetensors``, tokenizer files).
        entropy_threshold: default threshold (nats, float or one per layer), stored in the model's config; None
            uses the checkpoint's calibrated ``config.entropy_threshold`` (0.0, full depth, when it has none).
        backend: ``"auto"`` (``"triton"`` on a CUDA GPU, ``"native"`` on the CPU when the native kernels build, else
            ``"torch"``; one log line says which and why), ``"torch"`` (the reference path, any device),
            ``"native"`` (C++ kernels, fp32 CPU) or ``"triton"`` (CUDA).
        num_threads: CPU threads of this model's calls (torch's count is restored after each call): ``"auto"``
            (default) chooses per call as many as other processes leave cores free, at most torch's count now
            (:mod:`costeff_fast.threads`); an int fixes it; None leaves torch's setting. A different count changes
            the fp32 summation order, so with ``"auto"`` two calls on the same rows agree to rounding (about 1e-7),
            not bit for bit; pass an int where bitwise repeatability matters.
        device: torch device of the weights; the engine runs where they are (``.to(device)`` later moves both).
            None: CUDA when ``backend`` resolves to ``"triton"`` on a machine with a GPU (fp16 storage in the
            packed copy), else the CPU. With ``quantize="int8"`` the engine runs on the CPU whatever the device.
        max_batch_tokens: real tokens per engine call (default :data:`DEFAULT_MAX_BATCH_TOKENS`); larger calls run
            in consecutive chunks of rows, bounding activation memory (``[tokens, hidden]`` and
            ``[tokens, intermediate]`` buffers) whatever the batch size.
        quantize: None (fp32) or ``"int8"``: each layer's four GEMM weights (QKV, attention output, FFN in and out)
            packed int8 per output channel and run with dynamically quantized int8 activations (torch's fbgemm
            kernels, CPU only; ``backend`` ``"auto"``, ``"native"`` or ``"torch"``). Embeddings, attention,
            LayerNorms and exits stay fp32; a row exits when the entropy of the int8 model's own logits is below the
            threshold (:class:`~costeff_fast.packing.Int8Weight`, docs/design.md, Backends). The saved weights stay
            fp32.

    Returns:
        A :class:`CostEffEngineForSequenceClassification` (a ``transformers.PreTrainedModel``).

    Raises:
        FileNotFoundError: ``path`` is not a directory with a ``config.json``, or it has no ``model.safetensors``
            (weights are read from safetensors only).
        CheckpointError: (a ``ValueError``, :mod:`costeff_fast.checkpoint`) naming the file and the field or
            tensors: a config that is not JSON, of another ``model_type``, of a newer format or with a bad field;
            weights that are truncated, corrupt, missing, unexpected, mis-shaped or not finite; tokenizer files that
            cannot be loaded or a vocabulary larger than ``vocab_size``.
        ValueError: a bad backend, threshold, thread count or ``max_batch_tokens``; ``quantize`` other than
            None/``"int8"``, or ``"int8"`` with ``backend="triton"`` or a non-CPU device (refused before anything
            is loaded).
        RuntimeError: ``backend="native"`` where the kernels cannot be built, ``"triton"`` without CUDA,
            ``quantize="int8"`` in a torch build without its int8 CPU kernels.
    """
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} has no config.json; pass a directory written by save_pretrained")
    return CostEffEngineForSequenceClassification.from_pretrained(
        directory, entropy_threshold=entropy_threshold, backend=backend, num_threads=num_threads, device=device,
        max_batch_tokens=max_batch_tokens, quantize=quantize)
