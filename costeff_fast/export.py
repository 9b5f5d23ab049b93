"""ONNX export of a COST-EFF checkpoint for ONNX Runtime: every layer at its own width, one output per exit and the
final logits.

The exported graph is the reference padded forward (:class:`~costeff_fast.modeling.CostEffForSequenceClassification`)
traced by ``torch.onnx.export`` (its ``torch.export``-based exporter, which needs ``onnx`` and ``onnxscript``):

* inputs ``input_ids``, ``attention_mask``, ``token_type_ids``: ``[batch, sequence]`` int64, right-padded, sequence
  at most ``max_position_embeddings`` (both axes dynamic);
* outputs ``exit_1_logits`` ... ``exit_L_logits`` (``[batch, num_labels]`` fp32, exit l after layer l) and
  ``logits`` (the last exit's, the full-depth answer).

What it cannot do: **early exit**. The graph runs every layer for every row; ONNX Runtime has no way to drop rows
from a running batch, so the compute saving of early exit (rows leaving at their first confident exit, the
survivors compacted) needs the engine (:func:`costeff_fast.from_pretrained`). The threshold rule can still be
applied to the outputs (the first exit whose entropy is below ``config.entropy_threshold`` answers; the last always
does), which gives the engine's labels at full-depth cost. The graph has no tokenizer: tokenize with the
checkpoint's tokenizer, ``truncation=True, max_length=`` the engine's ``max_length``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_model
from .modeling import CostEffForSequenceClassification

logger = logging.getLogger(__name__)

#: the graph's inputs, in order: ``[batch, sequence]`` int64 each
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
#: ONNX Runtime's tolerance against the reference forward, in logits (the issue's contract)
TOLERANCE = 1e-4
#: protobuf's limit on one file; larger weights go to a ``.data`` file next to the model
_PROTOBUF_LIMIT = 2**31 - 2**27


def output_names(num_layers: int) -> list[str]:
    """``["exit_1_logits", ..., "exit_L_logits", "logits"]``: the graph's outputs, in order."""
    return [f"exit_{layer}_logits" for layer in range(1, num_layers + 1)] + ["logits"]


class _EveryExit(nn.Module):
    """The reference forward with a tuple out: every exit's logits, then the last exit's again as ``logits``."""

    def __init__(self, model: CostEffForSequenceClassification):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        # The reference forward by name, whatever subclass was given (the engine model's eval forward is the engine).
        out = CostEffForSequenceClassification.forward(self.model, input_ids, attention_mask=attention_mask,
                                                       token_type_ids=token_type_ids, entropy_threshold=0.0)
        return (*out.exit_logits, out.exit_logits[-1])


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file.
        outputs: the graph's output names, in order (:func:`output_names`).
        max_abs_diff: the largest difference between ONNX Runtime's outputs and the reference forward's on the
            check batch (fp32 logits), or None when the check did not run (``check=False`` or no onnxruntime).
        external_data: the ``.data`` file holding the weights when they exceed protobuf's 2 GB, else None.
    """

    path: Path
    outputs: list[str]
    max_abs_diff: float | None
    external_data: Path | None


def missing_onnx_packages() -> list[str]:
    """The packages ``torch.onnx.export`` needs here (``onnx``, ``onnxscript``) that are not installed."""
    return [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the exporter's progress warnings (missing torchvision ops, axis renames) unless costeff_fast logs
    at DEBUG."""
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    torch_onnx = logging.getLogger("torch.onnx")
    level = torch_onnx.level
    torch_onnx.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        torch_onnx.setLevel(level)


def check_batch(config, *, rows: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """A right-padded random batch to compare a graph with the reference: ``rows`` rows of 1 to
    ``min(24, max_position_embeddings)`` tokens, the later half of each row of token type 1 where the model has
    two types. Returns ``input_ids``, ``attention_mask``, ``token_type_ids`` ``[rows, S]`` int64."""
    generator = torch.Generator().manual_seed(seed)
    longest = min(24, config.max_position_embeddings)
    lengths = torch.randint(1, longest + 1, (rows,), generator=generator)
    lengths[0] = longest
    positions = torch.arange(longest)[None, :]
    mask = (positions < lengths[:, None]).long()
    ids = torch.randint(0, config.vocab_size, (rows, longest), generator=generator) * mask
    second = (positions >= (lengths[:, None] + 1) // 2).long() * mask
    types = second if config.type_vocab_size > 1 else torch.zeros_like(ids)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def onnx_max_abs_diff(path: str | os.PathLike, model: CostEffForSequenceClassification,
                      batch: dict[str, torch.Tensor]) -> float:
    """The largest ``|onnxruntime - reference|`` over every output of the graph at ``path`` on ``batch``.

    Args:
        path: an ``.onnx`` file written by :func:`export_onnx`.
        model: the model it was exported from, fp32 on the CPU and in eval mode (the reference).
        batch: ``input_ids``, ``attention_mask``, ``token_type_ids`` ``[B, S]`` int64 (e.g. :func:`check_batch`).

    Raises:
        ModuleNotFoundError: onnxruntime is not installed.
    """
    import onnxruntime  # optional: costeff_fast[onnx]

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {name: batch[name].numpy() for name in INPUT_NAMES})
    with torch.no_grad():
        expected = _EveryExit(model)(*(batch[name] for name in INPUT_NAMES))
    return max(float((torch.from_numpy(got) - want).abs().max()) for got, want in zip(outputs, expected))


def export_onnx(model: CostEffForSequenceClassification | str | os.PathLike, output: str | os.PathLike, *,
                opset: int | None = None, check: bool = True) -> OnnxExport:
    """Write a COST-EFF model as an ONNX graph (module notes: inputs, outputs, what it cannot do).

    Args:
        model: a :class:`~costeff_fast.modeling.CostEffForSequenceClassification` (any subclass, any dtype;
            exported in fp32 on the CPU from a copy) or a checkpoint directory.
        output: the ``.onnx`` file to write (its directory is created). Weights over protobuf's 2 GB go to
            ``<output>.data`` next to it.
        opset: ONNX opset (None: the exporter's default).
        check: run the graph in onnxruntime on :func:`check_batch` and compare every output with the reference
            forward; skipped (``max_abs_diff`` None, one log line) when onnxruntime is not installed.

    Returns:
        An :class:`OnnxExport`.

    Raises:
        ModuleNotFoundError: ``onnx`` or ``onnxscript`` missing (the message gives the pip command).
        FileNotFoundError: ``model`` is a path without a ``config.json``.
        CheckpointError (a ValueError): a checkpoint that is not COST-EFF or cannot be loaded
            (:func:`~costeff_fast.checkpoint.load_model`).
        ValueError: ``output`` is an existing directory; the check finds a difference above 1e-4
            (:data:`TOLERANCE`).
    """
    missing = missing_onnx_packages()
    if missing:
        raise ModuleNotFoundError(
            f"ONNX export needs {' and '.join(missing)}: pip install 'costeff_fast[onnx]' "
            "(onnx, onnxscript and onnxruntime)")
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    output = Path(output)
    if output.is_dir():
        raise ValueError(f"--out {output} is a directory; pass the .onnx file to write")
    output.parent.mkdir(parents=True, exist_ok=True)
    source = model
    model = CostEffForSequenceClassification(source.config)
    model.load_state_dict({name: tensor.float().cpu() for name, tensor in source.state_dict().items()})
    model.eval()
    config = model.config
    names = output_names(config.num_hidden_layers)
    example = check_batch(config, rows=2, seed=1)
    batch_axis = torch.export.Dim("batch")
    sequence_axis = torch.export.Dim("sequence", max=config.max_position_embeddings)
    axes = {name: {0: batch_axis, 1: sequence_axis} for name in INPUT_NAMES}
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = weight_bytes >= _PROTOBUF_LIMIT
    logger.info("exporting %d layers (%d parameters) to %s", config.num_hidden_layers,
                sum(p.numel() for p in model.parameters()), output)
    with _quiet_exporter():
        torch.onnx.export(_EveryExit(model), tuple(example[name] for name in INPUT_NAMES), str(output),
                          input_names=list(INPUT_NAMES), output_names=names, dynamic_shapes=axes,
                          opset_version=opset, dynamo=True, external_data=external, verbose=False)
    difference = None
    if check and importlib.util.find_spec("onnxruntime") is not None:
        difference = onnx_max_abs_diff(output, model, check_batch(config))
        logger.info("onnxruntime against the reference forward: max |difference| %.2e", difference)
        if difference > TOLERANCE:
            raise ValueError(f"the exported graph differs from the reference by {difference:.2e} > {TOLERANCE} "
                             f"in onnxruntime; {output} is not reliable")
    elif check:
        logger.info("onnxruntime is not installed: the export was not checked (pip install 'costeff_fast[onnx]')")
    data = output.with_name(output.name + ".data")
    return OnnxExport(output, names, difference, data if external and data.exists() else None)
