"""What a user would pick instead of costeff_fast for CPU speed: ONNX Runtime (fused BERT graph, fp32 and int8)
and torch dynamic int8, each built from the same Hugging Face teacher and timed on the same rows.

* ``ort_fp32_fused``: the teacher exported with ``torch.onnx.export`` (TorchScript exporter, opset 17, dynamic
  batch and sequence axes), then ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")``, which
  fuses EmbedLayerNormalization, Attention, SkipLayerNormalization and BiasGelu (ONNX Runtime docs,
  "Transformer Model Optimization Tool");
* ``ort_int8``: that fused graph through ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, dynamic
  int8 activations; ONNX Runtime docs, "Quantize ONNX models");
* ``torch_dynamic_int8``: ``torch.ao.quantization.quantize_dynamic`` of the teacher's ``nn.Linear`` layers;
* ``ort_costeff``: the COST-EFF model itself exported by ``costeff_fast.export`` and run by ORT at full depth (the
  same compressed weights as the engine at threshold 0: runtime against runtime).

``onnxruntime`` is the ``bench`` extra (``pip install costeff_fast[bench]``); without it the ORT contenders are
skipped and the benchmark says so.
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import workloads as wl

import costeff_fast
from costeff_fast import CostEffEngineForSequenceClassification

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def export_teacher(teacher, directory: Path) -> dict[str, Path]:
    """Write ``teacher.onnx``, ``teacher_fused.onnx`` and ``teacher_int8.onnx`` under ``directory``.

    Returns:
        ``{"fp32_fused": path, "int8": path}``.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    directory.mkdir(parents=True, exist_ok=True)
    raw, fused, int8 = directory / "teacher.onnx", directory / "teacher_fused.onnx", directory / "teacher_int8.onnx"
    sample = wl.hf_batches(["an example sentence", "another one, a little longer"], 2)[0]
    eager = copy.deepcopy(teacher).eval()
    eager.config._attn_implementation = "eager"  # the exporter traces the plain attention the optimizer fuses
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(eager, tuple(sample[k] for k in INPUTS), str(raw), input_names=list(INPUTS),
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={**{k: {0: "batch", 1: "sequence"} for k in INPUTS}, "logits": {0: "batch"}})
    config = teacher.config
    optimized = optimizer.optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                                         hidden_size=config.hidden_size)
    optimized.save_model_to_file(str(fused))
    quantize_dynamic(str(fused), str(int8), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"fp32_fused": fused, "int8": int8}


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_logits(session, batch: dict) -> torch.Tensor:
    """``[B, C]`` fp32 logits of an ORT session on one tokenized batch."""
    feed = {k: batch[k].numpy() for k in INPUTS if k in {i.name for i in session.get_inputs()}}
    return torch.from_numpy(session.run(None, feed)[0])


def ort_contender(session, config, texts: list[str], batch_size: int) -> wl.Contender:
    """An ORT session on the same padded batches as the HF teacher (tokenization not timed)."""
    batches = wl.hf_batches(texts, batch_size)

    def run():
        return [ort_logits(session, batch) for batch in batches]

    executed = torch.cat([torch.full((len(b["input_ids"]),), b["input_ids"].shape[1]) for b in batches])
    return wl.Contender(run, len(texts), wl.bert_flops(config, executed) / 1e9,
                        wl.bert_flops(config, torch.full_like(executed, wl.MAX_LENGTH)) / 1e9)


def torch_dynamic_int8(teacher):
    """The teacher with every ``nn.Linear`` as a dynamic int8 linear (fbgemm), a deep copy."""
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(teacher).eval(), {torch.nn.Linear}, dtype=torch.qint8)


def export_costeff(reference, directory: Path) -> Path:
    """The COST-EFF model written by ``costeff_fast.export.export_onnx`` (checked in onnxruntime) as
    ``costeff.onnx`` under ``directory``: the same compressed weights as the engine, every layer run."""
    from costeff_fast.export import export_onnx

    return export_onnx(reference, directory / "costeff.onnx").path


def ort_costeff_contender(session, config, texts: list[str], batch_size: int) -> wl.Contender:
    """ORT running an exported COST-EFF graph at full depth on padded batches (tokenization not timed); the
    last output is the final layer's logits (``costeff_fast.export.output_names``)."""
    batches = wl.hf_batches(texts, batch_size)
    final = session.get_outputs()[-1].name

    def run():
        return [ort_costeff_logits(session, batch, final) for batch in batches]

    padded = torch.cat([torch.full((len(b["input_ids"]),), b["input_ids"].shape[1]) for b in batches])
    depth = torch.full_like(padded, config.num_hidden_layers)
    return wl.Contender(run, len(texts), wl.costeff_flops(config, padded, depth) / 1e9,
                        wl.costeff_flops(config, torch.full_like(padded, wl.MAX_LENGTH), depth) / 1e9)


def ort_costeff_logits(session, batch: dict, final: str | None = None) -> torch.Tensor:
    """``[B, C]`` final-layer logits of an exported COST-EFF graph on one tokenized batch."""
    feed = {k: batch[k].numpy() for k in INPUTS if k in {i.name for i in session.get_inputs()}}
    final = final or session.get_outputs()[-1].name
    return torch.from_numpy(session.run([final], feed)[0])


def build_peers(teacher, reference, tokenizer, tau, texts: list[str], threads: int, batch_size: int = 64,
                log: Callable[[str], None] = print) -> tuple[dict[str, wl.Contender], dict[str, Callable]]:
    """Every peer on ``texts``: of the teacher (``optimize`` fp32 and int8, torch dynamic int8, and with
    onnxruntime ORT fp32 fused and ORT int8) and of the COST-EFF ``reference`` model (the engine with int8
    GEMMs at threshold 0 and ``tau``, and with onnxruntime ORT running its export at full depth). Engines run at
    torch's thread count (``num_threads=None``); ORT sessions at ``threads``.

    Returns:
        ``(contenders, predictors)``: a :class:`workloads.Contender` per name, and per name a function from a
        list of strings to ``[N]`` predicted label ids (for accuracy on other rows).
    """
    contenders, predictors = {}, {}

    def hf_like(name, model, packed):
        contenders[name] = wl.hf_contender(model, texts, batch_size, packed=packed, config=teacher.config)
        predictors[name] = lambda rows, m=model: m(**wl.hf_batches(rows, len(rows))[0]).logits.argmax(-1)

    have_ort = onnxruntime_available()
    log("building the teacher's peers: optimize() fp32 and int8, torch dynamic int8"
        + (", ORT fp32 fused and ORT int8" if have_ort else " (onnxruntime not installed: no ORT peers)"))
    for name, quantize in (("optimize_teacher", None), ("optimize_int8_teacher", "int8")):
        model = costeff_fast.optimize(teacher, quantize=quantize, num_threads=None)  # the benchmark's thread count
        hf_like(name, model, packed=True)
    hf_like("torch_dynamic_int8_teacher", torch_dynamic_int8(teacher), packed=False)
    scratch = tempfile.TemporaryDirectory(prefix="costeff-bench-onnx-")  # the sessions keep their graphs in memory
    onnx_dir = Path(scratch.name)
    if have_ort:
        for name, path in export_teacher(teacher, onnx_dir).items():
            session = ort_session(path, threads)
            contenders[f"ort_{name}_teacher"] = ort_contender(session, teacher.config, texts, batch_size)
            predictors[f"ort_{name}_teacher"] = (
                lambda rows, m=session: ort_logits(m, wl.hf_batches(rows, len(rows))[0]).argmax(-1))
    log("building COST-EFF int8 (quantize='int8')"
        + (" and ORT running the exported COST-EFF model" if have_ort else ""))
    int8 = CostEffEngineForSequenceClassification.from_model(reference, tokenizer, quantize="int8", num_threads=None)
    for name, threshold in (("costeff_int8_no_exit", 0.0), ("costeff_int8_early_exit", tau)):
        contenders[name] = wl.engine_contender(int8, texts, batch_size, threshold)
        predictors[name] = lambda rows, t=threshold: int8.predict(rows, entropy_threshold=t)
    if have_ort:
        session = ort_session(export_costeff(reference, onnx_dir), threads)
        contenders["ort_costeff_no_exit"] = ort_costeff_contender(session, reference.config, texts, batch_size)
        predictors["ort_costeff_no_exit"] = (
            lambda rows: ort_costeff_logits(session, wl.hf_batches(rows, len(rows))[0]).argmax(-1))
    scratch.cleanup()
    return contenders, predictors
