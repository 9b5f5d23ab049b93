"""The one-command GPU check: the triton backend compiled, checked against the reference and timed; JSON + log.

Run through ``bench/gpu_check.sh`` (it sets the environment, the time limit and the log)::

    bash bench/gpu_check.sh RESULTS_DIR             # a CUDA GPU (the H100/H200 machine): under 8 minutes
    bash bench/gpu_check.sh RESULTS_DIR --dry-run   # any CPU: tiny sizes through the Triton interpreter

It writes ``RESULTS_DIR/gpu_check.json`` (rewritten after every section, so a run cut short still leaves
what it found) and the shell script tees everything printed into ``RESULTS_DIR/gpu_check.log``. Sections, in
this order (what the first run most needs first; the long pytest last, on what time is left):

1. ``environment``: Python, torch, CUDA, triton, transformers, the GPU (name, capability, memory, the roofline
   peaks assumed for it), ``nvidia-smi``, the payload's manifest, that nothing on this path imported
   ``datasets`` or ``costeff_fast.training`` (neither exists on the GPU machine), and ``prediction``: the paper
   prediction of docs/design.md (``bench/roofline.py``, rt-standard-uniform) for this board on the payload's rows.
2. ``prewarm``: every Triton launcher compiled at the shapes the timed sections use: each throughput contender
   once on every row set at every batch size (the rt rows' own lengths), and the kernels section's layers once;
   its time and the compiled variants per kernel say what a cold cache costs.
3. ``kernels``: ``bench_gpu.kernel_rows``: each kernel of a layer against its roofline (and cuBLAS), at
   256 x 128 tokens and at 32 real-length rows, each with its predicted time (``roofline.kernel_us``, the mid
   case) and, per layer, the fused layer's predicted time; and ``host_costs``: the host's cost of one Triton
   launch, one torch op, one host-only call and one blocking wait, and the shortest kernel, measured here.
4. ``engine_random``: ``run_early_exit`` on the triton backend against ``early_exit_reference`` (fp32, CPU,
   one row at a time) on random models with per-layer widths, [CLS] and mean-pooling exits and a pooled exit,
   at thresholds that send rows out at every exit; fp16 and bf16 storage.
5. ``engine_checkpoint``: the same on the trained checkpoint of the payload (``bench/make_gpu_payload.py``)
   over its rt validation rows at its calibrated threshold, plus accuracy; skipped (and said so) without one.
6. ``throughput``: ``bench_gpu.throughput_grid``: HF fp16 sdpa against the triton backend (BERT-base, the 8x
   COST-EFF shape, the checkpoint), batch 32-256, real and 128-token rows, early exit off and on; CUDA-event
   time and host wall time per batch, and next to them the predicted time (``roofline.engine_prediction`` from
   each row's real length and exit layer, ``roofline.hf_prediction`` for HF; the mid case, its fast-slow range,
   and the mid case with the host costs measured in ``kernels``).
7. ``pytest``: ``tests/test_kernel_*.py`` and ``tests/test_triton_backend.py``, one pytest per file, compiled
   and run on the GPU (the files parametrize fp32/fp16/bf16; bf16 runs only there); per file the counts,
   counts per dtype, failures and every ``max abs err`` line the tests print.

Robustness: the script itself only starts *workers* (this file with ``--worker``) and merges what they write.
A worker runs the sections in order, each in its own try/except, writes the JSON after each, and exits after
a section that raised, so a broken CUDA context cannot spoil the next section: the next worker starts fresh.
Each section has a time cap (a worker that overruns it by 30 s is killed and the section marked), and a global
budget skips what no longer fits. The exit status is 0 when no section failed or raised (a skipped section says
why in the JSON).

Time caps (``CAP_S``), sized for a cold Triton cache (the GPU machine starts bare: nothing compiled, nothing
cached), so the whole check fits in 8 minutes of one 10-minute device call:

* outer limits: the device call allows 600 s; ``gpu_check.sh`` kills python at 470 s (+10 s to die): 480 s;
  this script's own budget is 440 s (``BUDGET_S``), and a section's worker is killed 30 s past its cap or
  10 s past the budget, so the shell's guard is only the last one. That leaves 120 s of the call for the
  machine's start-up, the transfers and a look at the result.
* compile cost assumed: about 1.5 s per Triton variant on the machine's 16 cores (LLVM + ptxas of a kernel with
  ``tl.dot``; ``prewarm`` records the real count and seconds).
* ``environment`` 40 s: imports (~10 s cold), the payload (~2 s), nvidia-smi, the paper prediction (<1 s).
* ``prewarm`` 100 s: the contenders built (random BERT-base, its conversion, the 8x model, the teacher shape,
  thresholds from 64 rows on the CPU: ~15 s), about 35 fp16 variants (linear: GELU x 2 tiles x row-count
  alignment; LayerNorm GEMM: 2 hidden sizes x alignment; attention: head sizes 32/64; exit head with and
  without pooler; compaction at 4 batch sizes) x 1.5 s = ~55 s, the 64 first calls and the kernel layers once
  (~5 s): ~75 s expected.
* ``kernels`` 40 s: warm now: 3 shapes x 2 sizes x 10 timed callables x 12 calls (~5 s) and the host-cost
  probes (~2 s): ~10 s expected.
* ``engine_random`` 90 s: its widths (FFN 7-512, hidden 32-768) and bf16 are new variants: ~40 x 1.5 s = 60 s,
  plus the CPU reference of 3 models (~10 s): ~70 s expected.
* ``engine_checkpoint`` 45 s: the reference on 1,276 rows (~10 s), ~10 new bf16 variants (~15 s): ~30 s.
* ``throughput`` 80 s: warm: 8 contenders x 8 cells x 13 calls (~15 s) plus the predictions: ~20 s expected.
* ``pytest``: whatever is left of the 440 s, at least 440 - (40 + 100 + 40 + 90 + 45 + 80) = 45 s when every
  section before it runs to its cap, about 440 - (15 + 75 + 10 + 70 + 30 + 20) = 220 s when they take the
  expected times; each file gets
  a timeout that keeps 20 s for every later file, and a file cut short says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
JSON_NAME = "gpu_check.json"
SECTIONS = ("environment", "prewarm", "kernels", "engine_random", "engine_checkpoint", "throughput", "pytest")
BUDGET_S = {"gpu": 440.0, "dry-run": 300.0}
#: seconds per section (the module docstring gives the arithmetic); pytest, last, takes what is left
CAP_S = {"environment": 40, "prewarm": 100, "kernels": 40, "engine_random": 90, "engine_checkpoint": 45,
         "throughput": 80, "pytest": 440}
FORBIDDEN = ("datasets", "costeff_fast.training")  # absent on the GPU machine


class Skip(Exception):
    """A section that does not apply (its reason is recorded, status ``skipped``)."""


# ---------------------------------------------------------------------------------------------------------------
# pytest plugin (loaded by the pytest section with ``-p gpu_check``)


def pytest_collection_modifyitems(items):
    """Record each test's floating torch dtype parameters as the JUnit property ``dtypes`` (``none``: no such
    parameter; ``float16,float32``: two of them)."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        dtypes = sorted(str(v).removeprefix("torch.") for v in params.values()
                        if getattr(v, "is_floating_point", False) is True)
        item.user_properties.append(("dtypes", ",".join(dtypes) or "none"))


def parse_junit(path) -> dict:
    """Counts, counts per dtype, failures (first 20) and ``max abs err`` lines of a pytest JUnit XML file."""
    import xml.etree.ElementTree as ET

    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    by_dtype: dict[str, dict[str, int]] = {}
    failures, err_lines = [], []
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for tag, name in (("failure", "failed"), ("error", "errors"), ("skipped", "skipped")):
            node = case.find(tag)
            if node is not None:
                outcome = name
                if name != "skipped":
                    failures.append({"test": test, "message": (node.get("message") or "")[:500],
                                     "detail": (node.text or "")[-1500:]})
                break
        counts["tests"] += 1
        counts[outcome] += 1
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        for dtype in props.get("dtypes", "none").split(","):
            by_dtype.setdefault(dtype, {"passed": 0, "failed": 0, "errors": 0, "skipped": 0})[outcome] += 1
        out = case.find("system-out")
        for line in (out.text or "").splitlines() if out is not None else ():
            if "max abs err" in line:
                err_lines.append(line.strip())
    return {**counts, "by_dtype": by_dtype, "failures": failures[:20], "max_abs_err_lines": err_lines[:150]}


# ---------------------------------------------------------------------------------------------------------------
# What a run measures: the GPU sizes, or tiny ones for --dry-run


@dataclass(frozen=True)
class EngineModel:
    """A random model of the engine check: config fields, rows, longest row, sentence pairs or not."""

    name: str
    fields: dict
    rows: int
    max_len: int
    pairs: bool


TINY_FIELDS = dict(vocab_size=97, hidden_size=32, num_hidden_layers=4, num_attention_heads=[2, 1, 3, 2],
                   attention_head_size=16, intermediate_size=[16, 40, 7, 24], num_labels=3,
                   max_position_embeddings=64, embedding_rank=12, exit_pooler=[False, True, False, False])


@dataclass(frozen=True)
class Plan:
    """Sizes of one run (see :data:`GPU_PLAN` and :data:`DRY_PLAN`)."""

    dtypes: tuple[str, ...]
    tolerance: dict  # max abs logit difference to the fp32 reference, per storage dtype
    pytest_runs: tuple[tuple[str, ...], ...]  # the arguments of each pytest invocation (targets, maybe -k)
    engine_models: tuple[EngineModel, ...]
    batch_sizes: tuple[int, ...]
    full_length: int
    repeats: int  # interleaved timing rounds (median reported)
    warmup: int  # untimed calls per contender before them (on top of the one that counts exit layers)
    kernel_sizes: dict = field(default_factory=dict)  # name -> (rows, tokens per row); tokens None: real lengths
    tiny: bool = False


GPU_PLAN = Plan(
    dtypes=("float16", "bfloat16"),
    tolerance={"float16": 5e-2, "bfloat16": 2.5e-1},  # logits up to ~5; torch's own bf16 forward is ~0.1 off
    pytest_runs=tuple((f"tests/{name}.py",) for name in (
        "test_kernel_ffn", "test_kernel_attention", "test_kernel_exit_head", "test_kernel_compaction",
        "test_triton_backend")),
    engine_models=(
        EngineModel("costeff-8x-mixed", dict(
            vocab_size=30522, hidden_size=768, num_hidden_layers=6, num_attention_heads=[2, 1, 3, 2, 4, 2],
            attention_head_size=64, intermediate_size=[256, 100, 37, 300, 256, 512], embedding_rank=128,
            max_position_embeddings=128, num_labels=2, exit_pooler=[False, True, False, False, False, True]),
            rows=64, max_len=128, pairs=True),
        EngineModel("slender-384-mean", dict(
            vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=[2, 2, 1, 3, 2, 2],
            attention_head_size=32, intermediate_size=160, max_position_embeddings=128, num_labels=2,
            exit_pooling="mean", exit_pooler=[False] * 5 + [True]), rows=64, max_len=128, pairs=False),
        EngineModel("tiny-d16", TINY_FIELDS, rows=48, max_len=40, pairs=True),
    ),
    batch_sizes=(32, 64, 128, 256),
    full_length=128,
    repeats=10,
    warmup=2,
    kernel_sizes={"256x128": (256, 128), "32 real rows": (32, None)},
)

DRY_PLAN = Plan(
    dtypes=("float32",),
    tolerance={"float32": 1e-4},
    pytest_runs=(("tests/test_kernel_compaction.py", "tests/test_triton_backend.py", "-k",
                  "(compact_tokens and lengths1) or engine_without_threshold"),),
    engine_models=(EngineModel("tiny-d16", TINY_FIELDS, rows=20, max_len=24, pairs=True),),
    batch_sizes=(3,),
    full_length=16,
    repeats=1,
    warmup=0,
    kernel_sizes={"4x16": (4, 16), "4 real rows": (4, None)},
    tiny=True,
)


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces of the sections


def random_model(fields: dict, seed: int):
    """A random ``CostEffForSequenceClassification`` (fp32, CPU, eval) whose exits are sometimes confident.

    Linear weights ``N(0, 1/fan_in)``, biases and LayerNorm shifts ``N(0, 0.01)``, LayerNorm scales
    ``N(1, 0.01)``, embeddings ``N(0, 1)``, and classifiers 4x larger, so activations stay O(1) at any width
    and exit entropies spread from near 0 to ``ln C`` (an initialization at std 0.02 gives every row ``ln C``).
    """
    import torch

    from costeff_fast import CostEffConfig, CostEffForSequenceClassification

    torch.manual_seed(seed)
    model = CostEffForSequenceClassification(CostEffConfig(**fields)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.1)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, 1.0)
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.1)
        for head in model.exits:
            head.classifier.weight.mul_(4.0)
    return model


def random_batch(seed: int, rows: int, vocab_size: int, max_len: int, pairs: bool) -> dict:
    """Right-padded ``[B, S]`` int64 ``input_ids``, ``attention_mask``, ``token_type_ids`` at uniform lengths in
    ``[1, max_len]``; with ``pairs`` the tokens after a random split point have type 1."""
    import torch

    from bench_gpu import padded

    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (rows,), generator=generator)
    batch = padded([torch.randint(1, vocab_size, (int(n),), generator=generator).tolist() for n in lengths])
    if pairs:
        split = (lengths.float() * torch.rand(rows, generator=generator)).long()
        positions = torch.arange(batch["input_ids"].shape[1])[None, :]
        batch["token_type_ids"] = (positions >= split[:, None]).long() * batch["attention_mask"]
    return batch


def gap_thresholds(entropies) -> list[float]:
    """Per layer but the last, the middle of the widest gap between consecutive sorted entropies of the middle
    half of the rows (so some rows leave at every exit and few sit near the threshold); 0.0 for the last."""
    rows, layers = entropies.shape
    low, high = rows // 4, max(rows // 4 + 1, (3 * rows) // 4)
    taus = []
    for layer in range(layers - 1):
        values = entropies[:, layer].sort().values
        gaps = values[low + 1 : high + 1] - values[low:high]
        index = low + int(gaps.argmax())
        taus.append(float(values[index] + values[index + 1]) / 2)
    return taus + [0.0]


def reference_outputs(model, batch: dict, tau: list[float] | None) -> dict:
    """The fp32 reference on the CPU: every exit's entropy ``[B, L]`` (nats), the full-depth logits ``[B, C]``,
    and the per-row early exit at ``tau`` (None: :func:`gap_thresholds`): logits ``[B, C]``, exit layers ``[B]``."""
    import torch

    from costeff_fast import exit_entropy

    with torch.inference_mode():
        exit_logits = model(**batch).exit_logits
        entropies = exit_entropy(torch.stack(exit_logits, dim=1))
        tau = gap_thresholds(entropies) if tau is None else tau
        logits, layers, _ = model.early_exit_reference(**batch, entropy_threshold=tau)
    return {"entropies": entropies, "full_logits": exit_logits[-1].float(), "logits": logits, "layers": layers,
            "tau": tau}


def engine_vs_reference(model, batch: dict, ref: dict, dtype, device, tolerance: float, chunk: int = 256) -> dict:
    """``run_early_exit`` on the triton backend (``dtype`` storage) against :func:`reference_outputs`.

    Rows whose entropy at some exit they reach lies within ``tolerance / 2`` nats of that exit's threshold may
    leave one layer apart in half precision (a logit error ``e`` moves a 2-class entropy by at most about
    ``e / 2``): they are left out of the exit-layer and logit comparison ("clear" rows are the others, at least
    an eighth of the rows). The full-depth logits (threshold 0) are compared on every row.

    Returns:
        ``ok`` and the figures behind it: ``full_depth_max_abs_diff``, ``clear_rows``,
        ``exit_layers_equal_clear_rows``, ``max_abs_diff_clear_rows``, ``exit_layers_equal_fraction`` (all rows),
        ``exit_layer_counts`` (reference, layers 1..L), ``mean_exit_layer`` (engine), ``logits`` (engine, CPU).
    """
    import torch

    from costeff_fast.backends.triton_backend import TritonBackend
    from costeff_fast.engine import run_early_exit

    backend = TritonBackend.from_model(model, device, dtype)
    num_layers = model.config.num_hidden_layers
    mask = batch["attention_mask"].bool()

    def run(tau):
        logits, layers = [], []
        for start in range(0, mask.shape[0], chunk):
            rows = slice(start, start + chunk)
            real = mask[rows]
            out = run_early_exit(backend, batch["input_ids"][rows][real], batch["token_type_ids"][rows][real],
                                 real.sum(1), tau)
            logits.append(out[0].cpu())
            layers.append(out[1].cpu())
        return torch.cat(logits), torch.cat(layers)

    with torch.inference_mode():
        full_logits, _ = run([0.0] * num_layers)
        logits, layers = run(ref["tau"])
    tau = torch.tensor(ref["tau"])
    reached = torch.arange(num_layers)[None, :] < ref["layers"][:, None]
    near = ((ref["entropies"] - tau).abs() < tolerance / 2) & reached
    near[:, -1] = False  # the last layer always answers
    clear = ~near.any(dim=1)
    equal = layers == ref["layers"]
    full_diff = float((full_logits - ref["full_logits"]).abs().max())
    clear_diff = float((logits[clear] - ref["logits"][clear]).abs().max()) if clear.any() else None
    result = {
        "rows": int(mask.shape[0]), "tokens": int(mask.sum()), "dtype": str(dtype).removeprefix("torch."),
        "tolerance": tolerance, "threshold_nats": [round(t, 6) for t in ref["tau"]],
        "full_depth_max_abs_diff": full_diff, "clear_rows": int(clear.sum()),
        "exit_layers_equal_clear_rows": bool(equal[clear].all()), "max_abs_diff_clear_rows": clear_diff,
        "exit_layers_equal_fraction": float(equal.float().mean()),
        "exit_layer_counts": torch.bincount(ref["layers"], minlength=num_layers + 1)[1:].tolist(),
        "mean_exit_layer": float(layers.float().mean()),
    }
    result["ok"] = bool(full_diff <= tolerance and result["exit_layers_equal_clear_rows"]
                        and result["clear_rows"] >= max(1, result["rows"] // 8)
                        and (clear_diff is None or clear_diff <= tolerance))
    return {**result, "logits": logits, "full_logits": full_logits}


def tiny_payload(directory: Path) -> Path:
    """Write a payload (``make_gpu_payload.write_payload``) of a random tiny checkpoint for the dry run.

    The checkpoint: :data:`TINY_FIELDS` with 2 labels, mean-pooling exits, a WordPiece tokenizer over 92 words
    ``w0`` ... ``w91`` and a threshold that lets about half of the rows leave at the first exit; 24 rows of 2-12
    random words with random labels (few tokens: the interpreter's time grows with them).
    """
    import torch
    from transformers import BertTokenizer

    from bench_gpu import padded, real_rows
    from make_gpu_payload import write_payload

    words = [f"w{index}" for index in range(92)]
    tokenizer = BertTokenizer(vocab={token: index for index, token in
                                     enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])})
    generator = torch.Generator().manual_seed(0)
    texts = [" ".join(words[i] for i in torch.randint(0, len(words), (int(n),), generator=generator).tolist())
             for n in torch.randint(2, 13, (24,), generator=generator)]
    labels = torch.randint(0, 2, (24,), generator=generator).tolist()
    model = random_model({**TINY_FIELDS, "num_labels": 2, "exit_pooling": "mean"}, seed=7)
    with torch.inference_mode():
        first_exit = model(**padded(real_rows(tokenizer, texts, 64))).exit_logits[0]
    from costeff_fast import exit_entropy

    model.config.entropy_threshold = float(exit_entropy(first_exit).median())
    checkpoint = directory / "checkpoint"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    write_payload(checkpoint, directory / "payload", texts, labels, ["negative", "positive"],
                  "random words (gpu_check --dry-run)")
    return directory / "payload"


# ---------------------------------------------------------------------------------------------------------------
# Sections (run in a worker)


class Context:
    """What a section sees: the plan, device, payload, deadlines and the results JSON it updates."""

    def __init__(self, args, results: dict):
        import torch

        self.args, self.results = args, results
        self.path = Path(args.results_dir) / JSON_NAME
        self.dry_run = args.dry_run
        self.plan = DRY_PLAN if args.dry_run else GPU_PLAN
        self.device = torch.device("cpu" if args.dry_run else "cuda")
        self.deadline = args.deadline
        self.section_deadline = args.deadline
        self.section: dict = {}
        self.payload_dir = Path(args.payload or BENCH / "gpu_payload")
        self.payload_error: str | None = None
        self._payload = False
        self._tmp = None
        self._cache: dict = {}

    def left(self) -> float:
        """Seconds until the current section's deadline (its cap or the global budget, the earlier)."""
        return self.section_deadline - time.time()

    def save(self) -> None:
        write_json(self.path, self.results)

    def update(self, **partial) -> None:
        """Record partial results of the running section now (kept if the section is cut short)."""
        self.section.update(partial)
        self.save()

    def payload(self):
        """The loaded payload, or None when there is none or it fails to load (``payload_error`` says why), so
        the sections that can do without it still run. The dry run builds a tiny one unless given ``--payload``."""
        if self._payload is False:
            self._payload = None
            try:
                from make_gpu_payload import load_payload

                if self.args.payload is None and self.dry_run:
                    self._tmp = tempfile.TemporaryDirectory(prefix="gpu_check_payload_")
                    self.payload_dir = tiny_payload(Path(self._tmp.name))
                if (self.payload_dir / "manifest.json").is_file():
                    self._payload = load_payload(self.payload_dir)
            except Exception:
                self.payload_error = traceback.format_exc()[-2000:]
        return self._payload

    def payload_note(self) -> dict:
        payload = self.payload()
        if self.payload_error:
            return {"present": True, "directory": str(self.payload_dir), "load_error": self.payload_error}
        if payload is None:
            return {"present": False, "looked_in": str(self.payload_dir),
                    "note": "no payload: the checkpoint section is skipped and the throughput rows are synthetic; "
                            "build it with `python bench/make_gpu_payload.py --model CHECKPOINT` and carry "
                            "bench/gpu_payload"}
        manifest = {key: value for key, value in payload.manifest.items() if key != "built_with"}
        return {"present": True, "directory": str(payload.directory), **manifest}


    def row_sets(self):
        """``({name: rows}, vocabulary size)`` of the throughput grid (and the prewarm): the payload's rt rows at
        their own lengths and cut to ``full_length`` tokens, else random ids (said so by the names)."""
        if "row_sets" not in self._cache:
            from bench_gpu import MAX_LENGTH, full_rows, real_rows, synthetic_rows

            payload, full = self.payload(), self.plan.full_length
            if payload is not None:
                max_length = min(MAX_LENGTH, payload.model.config.max_position_embeddings)
                self._cache["row_sets"] = ({"real": real_rows(payload.tokenizer, payload.texts, max_length),
                                            str(full): full_rows(payload.tokenizer, payload.texts, full)},
                                           payload.model.config.vocab_size)
            else:
                self._cache["row_sets"] = ({"synthetic 8-64": synthetic_rows(256, 30522, 8, 64),
                                            str(full): synthetic_rows(256, 30522, full, full)}, 30522)
        return self._cache["row_sets"]

    def contenders(self):
        """``(contenders, threshold notes, dtype)`` of the throughput grid, built once per worker (the prewarm's
        compiled launchers and the throughput section then time the very same backends)."""
        if "contenders" not in self._cache:
            import torch

            from bench_gpu import bert_base_config, build_contenders
            from costeff_fast import CostEffConfig
            from workloads import costeff_8x_config

            row_sets, vocab = self.row_sets()
            if self.plan.tiny:
                from transformers import BertConfig

                bert = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64, num_labels=2)
                slim = CostEffConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=1,
                                     attention_head_size=16, intermediate_size=16, embedding_rank=8,
                                     max_position_embeddings=64, num_labels=2)
            else:
                bert, slim = bert_base_config(vocab), costeff_8x_config()
                slim.vocab_size = vocab
            dtype = torch.float32 if self.dry_run else torch.float16
            payload = self.payload()
            contenders, thresholds = build_contenders(self.device, dtype, bert, slim,
                                                      payload.model if payload else None,
                                                      next(iter(row_sets.values())))
            self._cache["contenders"] = (contenders, thresholds, dtype)
        return self._cache["contenders"]

    def kernel_plan(self):
        """``(shapes, {size: lengths}, peaks key, dtype)`` of the kernels section (and the prewarm)."""
        import torch

        import bench_gpu

        row_sets, _ = self.row_sets()
        real_lengths = [len(row) for row in next(iter(row_sets.values()))]
        if self.plan.tiny:
            shapes, peaks_key, dtype = {"tiny": (32, 2, 16, 24)}, "H100", torch.float32
        else:
            shapes = dict(bench_gpu.KERNEL_SHAPES)
            peaks_key, dtype = bench_gpu.peaks_for(torch.cuda.get_device_name(self.device))[0], torch.float16
        payload = self.payload()
        if payload is not None and not self.plan.tiny:
            config = payload.model.config
            shapes["checkpoint"] = (config.hidden_size, config.num_attention_heads[0], config.attention_head_size,
                                    config.intermediate_size[0])
        sizes = {size: ([length] * count if length else bench_gpu.cycle(real_lengths, count))
                 for size, (count, length) in self.plan.kernel_sizes.items()}
        return shapes, sizes, peaks_key, dtype

    def gpu_key(self) -> str:
        """The :data:`roofline.PEAKS` board of this GPU (``H100`` in the dry run: figures for format only)."""
        import torch

        from roofline import peaks_for

        return "H100" if self.dry_run else peaks_for(torch.cuda.get_device_name(self.device))[0]


def forbidden_imports() -> list[str]:
    return sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def section_environment(ctx: Context) -> dict:
    import torch

    import bench_gpu
    import costeff_fast  # noqa: F401
    import costeff_fast.backends.triton_backend  # noqa: F401
    import costeff_fast.engine  # noqa: F401
    import costeff_fast.flops  # noqa: F401
    import costeff_fast.inference  # noqa: F401
    import make_gpu_payload  # noqa: F401

    cuda = torch.cuda.is_available()
    info = bench_gpu.environment(ctx.device if cuda else "cpu")
    info.update(mode="dry-run" if ctx.dry_run else "gpu", cuda_available=cuda,
                triton_interpret=os.environ.get("TRITON_INTERPRET"),
                costeff_fast_native=os.environ.get("COSTEFF_FAST_NATIVE"), payload=ctx.payload_note())
    import numpy
    import safetensors
    import tokenizers

    info.update(numpy=numpy.__version__, safetensors=safetensors.__version__, tokenizers=tokenizers.__version__)
    if cuda:
        query = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit"
        try:
            smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True,
                                 text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as error:
            info["nvidia_smi"] = f"unavailable: {error}"
    try:  # the prediction is pure arithmetic on tracked files; if it breaks, the measurements still count
        info["prediction"] = paper_prediction(ctx)
    except Exception:
        info["prediction"] = {"error": traceback.format_exc()[-2000:]}
    info["forbidden_imports"] = forbidden_imports()
    if ctx.dry_run:
        info["ok"] = not cuda and info["triton_interpret"] == "1" and not info["forbidden_imports"]
    else:
        info["ok"] = cuda and not info["forbidden_imports"]
        if not cuda:
            info["fatal"] = "no CUDA GPU (torch.cuda.is_available() is False); on a CPU machine use --dry-run"
    return info


def paper_prediction(ctx: Context) -> dict:
    """docs/design.md's prediction (``roofline.prediction``: rt-standard-uniform at its calibrated exits, the mid
    case and the fast-slow range) for this board on the first row set of the grid (the payload's rt rows)."""
    import roofline

    row_sets, _ = ctx.row_sets()
    lengths = [len(row) for row in next(iter(row_sets.values()))]
    record, key = roofline.run_of_record(), ctx.gpu_key()
    result = roofline.prediction(lengths, record, gpus=(key,), batches=ctx.plan.batch_sizes,
                                 full_length=ctx.plan.full_length)
    cells = {}
    for name, cell in result["gpus"][key].items():
        mid = cell["mid"]
        cells[name] = {
            "tokens": cell["tokens"], "hf_ms": mid["hf"]["ms"], "per_op_ms": mid["per_op"]["ms"],
            "fused_ms": mid["fused"]["ms"], "per_op_no_exit_ms": mid["per_op_no_exit"]["ms"],
            "per_op_vs_hf": mid["per_op_vs_hf"], "fused_vs_hf": mid["fused_vs_hf"],
            **{f"{ratio}_range": sorted(cell[case][ratio] for case in ("fast", "slow"))
               for ratio in ("per_op_vs_hf", "fused_vs_hf")},
            "per_op_layer_us": mid["per_op"]["layer_1"]["with_exit_us"],
            "per_op_layer_kernels_us": mid["per_op"]["layer_1"]["kernels_gpu_us"],
            "fused_layer_us": mid["fused"]["layer_1"]["with_exit_us"],
            "fused_kernel_us": mid["fused"]["layer_1"]["kernels_gpu_us"]}
    return {"run": record["name"], "board": key, "rows": len(lengths), "case": "mid",
            "command": "python bench/roofline.py (docs/design.md, GPU prediction)",
            "per_token": result["per_token"], "cells": cells}


def compiled_variants() -> dict:
    """Compiled (or disk-cached) variants of each Triton kernel of ``costeff_fast.kernels`` in this process
    (empty under the interpreter, which compiles nothing)."""
    from triton.runtime.jit import JITFunction

    from costeff_fast.kernels import attention, compaction, exit_head, ffn

    counts = {}
    for module in (ffn, attention, exit_head, compaction):
        for name, fn in vars(module).items():
            if isinstance(fn, JITFunction) and getattr(fn, "device_caches", None):
                try:
                    counts[name] = sum(len(cache[0]) for cache in fn.device_caches.values())
                except (TypeError, IndexError):  # another triton's cache layout: the count is only informative
                    counts[name] = None
    return counts


def section_prewarm(ctx: Context) -> dict:
    """Compile every launcher at the shapes the timed sections use, before any timing: each throughput contender
    once per row set and batch size (a triton contender's ``prepare`` runs the engine; HF runs once), then the
    kernels section's layers once (``kernel_rows`` with one repeat)."""
    import torch

    import bench_gpu

    begin = time.time()
    contenders, _, dtype = ctx.contenders()
    row_sets, _ = ctx.row_sets()
    built = time.time() - begin
    calls, truncated = 0, None
    for set_name, rows in row_sets.items():
        for batch_size in ctx.plan.batch_sizes:
            batch = bench_gpu.cycle(rows, batch_size)
            for contender in contenders:
                if ctx.left() < 10:
                    truncated = "section time cap"
                    break
                with torch.inference_mode():
                    fn = contender.prepare(batch, ctx.device)[0]
                    if contender.threshold is None:
                        fn()
                calls += 1
            ctx.update(engine_calls=calls, seconds_so_far=round(time.time() - begin, 1))
    engine_s = time.time() - begin - built
    shapes, sizes, peaks_key, kernel_dtype = ctx.kernel_plan()
    layers = 0
    for size, lengths in sizes.items():
        for name, shape in shapes.items():
            if truncated or ctx.left() < 10:
                truncated = "section time cap"
                break
            bench_gpu.kernel_rows(name, shape, lengths, ctx.device, kernel_dtype, bench_gpu.PEAKS[peaks_key], 1)
            layers += 1
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    variants = compiled_variants()
    result = {"build_s": round(built, 1), "engine_calls": calls, "engine_s": round(engine_s, 1),
              "kernel_layers": layers, "kernel_s": round(time.time() - begin - built - engine_s, 1),
              "compiled_variants": variants, "compiled_total": sum(v or 0 for v in variants.values()),
              "dtype": str(dtype).removeprefix("torch.")}
    if truncated:
        result["truncated"] = truncated
    expected_calls = len(row_sets) * len(ctx.plan.batch_sizes) * len(contenders)
    return {**result, "ok": not truncated and calls == expected_calls}


def section_pytest(ctx: Context) -> dict:
    runs = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCH), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory(prefix="gpu_check_pytest_") as tmp:
        for index, targets in enumerate(ctx.plan.pytest_runs):
            later = len(ctx.plan.pytest_runs) - index - 1
            left = max(45.0, ctx.left() - 5 - 20 * later)  # keep 20 s for each later file (a hang costs one)
            left = min(left, ctx.left() - 5)
            if left < 15:
                runs.append({"targets": list(targets), "status": "skipped: section time cap"})
                continue
            xml = Path(tmp) / f"junit{index}.xml"
            command = [sys.executable, "-m", "pytest", *targets, "-q", "-p", "no:cacheprovider", "-p", "gpu_check",
                       f"--junitxml={xml}", "-o", "junit_family=xunit1", "-o", "junit_logging=system-out",
                       "-o", "junit_log_passing_tests=true"]
            print(f"[gpu_check] {' '.join(command[2:])}", flush=True)
            begin = time.time()
            try:
                code = subprocess.run(command, cwd=ROOT, env=env, timeout=left).returncode
                run = {"targets": list(targets), "returncode": code}
            except subprocess.TimeoutExpired:
                run = {"targets": list(targets), "returncode": None, "status": f"killed after {left:.0f} s"}
            run["seconds"] = round(time.time() - begin, 1)
            if xml.is_file():
                run.update(parse_junit(xml))
            runs.append(run)
            ctx.update(runs=runs)
    totals = {key: sum(run.get(key, 0) for run in runs) for key in ("tests", "passed", "failed", "errors", "skipped")}
    passed_by_dtype: dict[str, int] = {}
    for run in runs:
        for dtype, counts in run.get("by_dtype", {}).items():
            passed_by_dtype[dtype] = passed_by_dtype.get(dtype, 0) + counts["passed"]
    wanted = [dtype for dtype in ("float16", "bfloat16") if not ctx.dry_run]
    ok = (all(run.get("returncode") == 0 for run in runs) and totals["passed"] > 0
          and all(passed_by_dtype.get(dtype, 0) > 0 for dtype in wanted))
    return {"runs": runs, "totals": totals, "passed_by_dtype": passed_by_dtype, "ok": ok}


def _strip(result: dict) -> dict:
    return {key: value for key, value in result.items() if key not in ("logits", "full_logits")}


def section_engine_random(ctx: Context) -> dict:
    import torch

    cases = []
    for seed, spec in enumerate(ctx.plan.engine_models):
        if ctx.left() < 10:
            ctx.update(truncated="section time cap")
            break
        model = random_model(spec.fields, seed)
        batch = random_batch(seed, spec.rows, spec.fields["vocab_size"], spec.max_len, spec.pairs)
        ref = reference_outputs(model, batch, None)
        for dtype in ctx.plan.dtypes:
            result = engine_vs_reference(model, batch, ref, getattr(torch, dtype), ctx.device,
                                         ctx.plan.tolerance[dtype])
            cases.append({"model": spec.name, **_strip(result)})
            ctx.update(cases=cases)
    return {"cases": cases, "ok": bool(cases) and all(case["ok"] for case in cases)}


def section_engine_checkpoint(ctx: Context) -> dict:
    import torch

    from bench_gpu import padded, real_rows
    from costeff_fast.config import resolve_entropy_threshold

    payload = ctx.payload()
    if ctx.payload_error:
        raise RuntimeError(f"the payload in {ctx.payload_dir} did not load:\n{ctx.payload_error}")
    if payload is None:
        raise Skip(ctx.payload_note()["note"])
    model = payload.model
    max_length = min(128, model.config.max_position_embeddings)
    batch = padded(real_rows(payload.tokenizer, payload.texts, max_length))
    tau = resolve_entropy_threshold(None, model.config)
    kind = "calibrated (checkpoint config)"
    if not any(tau[:-1]):
        tau, kind = None, "synthetic (the checkpoint has none): widest entropy gap per layer"
    ref = reference_outputs(model, batch, tau)
    labels = torch.tensor(payload.labels)

    def accuracy(logits):
        return float((logits.argmax(dim=1) == labels).float().mean())

    common = {"payload": str(payload.directory), "rows": len(labels), "max_length": max_length, "threshold": kind,
              "reference_accuracy": accuracy(ref["logits"]),
              "reference_full_depth_accuracy": accuracy(ref["full_logits"]),
              "reference_mean_exit_layer": float(ref["layers"].float().mean()),
              "compress_report": payload.manifest.get("compress_report")}
    ctx.update(**common)
    cases = []
    for dtype in ctx.plan.dtypes:
        result = engine_vs_reference(model, batch, ref, getattr(torch, dtype), ctx.device, ctx.plan.tolerance[dtype])
        cases.append({**_strip(result), "accuracy": accuracy(result["logits"]),
                      "full_depth_accuracy": accuracy(result["full_logits"]),
                      "predictions_equal_fraction": float((result["logits"].argmax(1)
                                                           == ref["logits"].argmax(1)).float().mean())})
        ctx.update(cases=cases)
    return {**common, "cases": cases, "ok": all(case["ok"] for case in cases)}


def throughput_predictor(ctx: Context, dtype, cells: dict):
    """The ``predict`` hook of ``throughput_grid``: each contender's predicted ms per batch on the very rows it ran
    (``roofline.exact_work`` from the rows' lengths and the exit layers the engine returned; HF padded to the
    longest row): the mid case, the fast-slow range and the mid case with ``kernels.host_costs``. It also keeps
    each batch's row lengths in ``cells`` (under the row's ``lengths_key``, ``"<rows> rows, <tokens> tokens"``)
    and the engine's exit layers in the row, so every figure can be recomputed from the JSON."""
    import roofline
    import torch

    from costeff_fast.batch import PackedBatch

    key = ctx.gpu_key()
    value_bytes = dtype.itemsize
    measured = ctx.results["sections"].get("kernels", {}).get("host_costs")
    cases = {**roofline.CASES, **({"measured": roofline.measured_case(measured)} if measured else {})}

    def predict(contender, rows, exit_layers) -> dict:
        lengths = [len(row) for row in rows]
        times = {}
        if exit_layers is None:
            teacher = roofline.Teacher.of(contender.config)
            for name, case in cases.items():
                times[name] = roofline.hf_prediction(teacher, lengths, key, case, value_bytes)["ms"]
        else:
            layers = roofline.costeff_layers(contender.config)
            work = roofline.exact_work(lengths, exit_layers, len(layers))
            # the backend's rule per layer, on the rows that reach it (the engine repacks the survivors, so a layer
            # after the long rows have left may fuse); a layer nobody reaches costs nothing and keeps "per-op"
            paths = []
            for i in range(len(layers)):
                reach = [n for n, layer in zip(lengths, exit_layers) if layer > i]
                batch = PackedBatch.from_lengths(torch.tensor(reach), "cpu") if reach else None
                paths.append("fused" if batch is not None and contender.model.fused(i, batch) else "per-op")
            path = paths[0] if len(set(paths)) == 1 else "mixed"
            for name, case in cases.items():
                times[name] = roofline.engine_prediction(layers, lengths, work, paths, contender.threshold, key,
                                                         case, value_bytes)["ms"]
        out = {"predicted_path": "hf" if exit_layers is None else path, "predicted_ms_per_batch": times["mid"],
               "predicted_ms_range": sorted([times["fast"], times["slow"]]),
               "predicted_ms_measured_host_costs": times.get("measured"),
               "lengths_key": f"{len(rows)} rows, {sum(lengths)} tokens"}
        cells[out["lengths_key"]] = lengths
        if exit_layers is not None:
            out["exit_layers"] = list(exit_layers)
            out["predicted_layer_paths"] = paths
        return out

    return predict


def section_throughput(ctx: Context) -> dict:
    from bench_gpu import throughput_grid

    row_sets, _ = ctx.row_sets()
    contenders, thresholds, dtype = ctx.contenders()
    ctx.update(dtype=str(dtype).removeprefix("torch."), row_sets={k: len(v) for k, v in row_sets.items()},
               thresholds=thresholds, contenders=[c.name for c in contenders], board=ctx.gpu_key(),
               prediction="bench/roofline.py: the engine on the path each layer takes (predicted_path: "
                          "fused, per-op or mixed; predicted_layer_paths) and HF, mid case; "
                          "predicted_ms_measured_host_costs uses kernels.host_costs")
    cells: dict = {}
    grid = throughput_grid(contenders, row_sets, ctx.plan.batch_sizes, ctx.device, ctx.plan.repeats, ctx.plan.warmup,
                           deadline=ctx.section_deadline - 15, on_row=lambda rows: ctx.update(results=rows),
                           predict=throughput_predictor(ctx, dtype, cells))
    for row in grid:
        row["measured_over_predicted"] = row["ms_per_batch"] / row["predicted_ms_per_batch"]
    expected = len(row_sets) * len(ctx.plan.batch_sizes) * len(contenders)
    early_exit = {}
    for row in grid:
        if row["contender"].endswith("_early_exit"):
            base = next(r for r in grid if r["rows"] == row["rows"] and r["batch"] == row["batch"]
                        and r["contender"] == row["contender"].replace("_early_exit", "_no_exit"))
            early_exit.setdefault(row["contender"].removesuffix("_early_exit"), []).append(
                {"rows": row["rows"], "batch": row["batch"], "mean_exit_layer": row["mean_exit_layer"],
                 "speedup_of_early_exit": base["ms_per_batch"] / row["ms_per_batch"]})
    ok = bool(grid) and all(row["ms_per_batch"] > 0 and row["sentences_per_s"] > 0 for row in grid)
    return {"results": grid, "cells": cells, "complete": len(grid) == expected, "early_exit_effect": early_exit,
            "ok": ok}


def measure_host_costs(device, dtype, calls: int) -> dict:
    """What the prediction's host costs are, measured: the host's time (us, median of 5 rounds of ``calls`` calls
    each) of one launch of ``kernels.linear`` on 16 rows, one tiny torch op (``add_``), one host-only call (a
    view), and, on CUDA, one blocking wait (a 16-byte copy into pinned memory after ``synchronize``) and the
    shortest kernel back to back (a CUDA graph of ``calls`` ``add_``, by CUDA events)."""
    import statistics

    import torch

    from costeff_fast import kernels

    cuda = device.type == "cuda"
    x = torch.randn(16, 64, device=device).to(dtype)
    w, b = torch.randn(64, 64, device=device).to(dtype), torch.zeros(64, device=device, dtype=dtype)
    y = torch.zeros(16, device=device)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def per_call(fn, count):
        rounds = []
        for _ in range(5):
            sync()
            begin = time.perf_counter()
            for _ in range(count):
                fn()
            rounds.append(1e6 * (time.perf_counter() - begin) / count)
            sync()
        return statistics.median(rounds)

    with torch.inference_mode():
        kernels.linear(x, w, b)
        result = {"triton_launch_us": per_call(lambda: kernels.linear(x, w, b), calls),
                  "torch_op_us": per_call(lambda: y.add_(1.0), calls),
                  "host_op_us": per_call(lambda: x[1:], calls), "sync_us": None, "kernel_floor_us": None,
                  "calls": calls}
        if cuda:
            mask = torch.zeros(16, dtype=torch.bool, device=device)
            pinned = torch.empty(16, dtype=torch.bool, pin_memory=True)
            waits = []
            for _ in range(50):
                torch.cuda.synchronize(device)
                begin = time.perf_counter()
                pinned.copy_(mask)
                waits.append(1e6 * (time.perf_counter() - begin))
            result["sync_us"] = statistics.median(waits)
            try:  # a probe, not a check: a failed capture is recorded, the section goes on
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for _ in range(calls):
                        y.add_(1.0)
                graph.replay()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                result["kernel_floor_us"] = 1e3 * start.elapsed_time(end) / calls
            except Exception as error:
                result["kernel_floor_error"] = f"{type(error).__name__}: {error}"[:500]
    return result


def section_kernels(ctx: Context) -> dict:
    import bench_gpu
    import roofline

    shapes, sizes, peaks_key, dtype = ctx.kernel_plan()
    mid = roofline.CASES["mid"]
    ctx.update(peaks=peaks_key, dtype=str(dtype).removeprefix("torch."), prediction_case="mid",
               note="roofline at H100 peaks on a CPU: format check only" if ctx.dry_run else None)
    host_costs = measure_host_costs(ctx.device, dtype, 5 if ctx.plan.tiny else 200)
    if ctx.dry_run:
        host_costs["note"] = "wall times of the Triton interpreter and torch on the CPU: format check only"
    ctx.update(host_costs=host_costs)
    rows = []
    for size, lengths in sizes.items():
        for name, shape in shapes.items():
            if ctx.left() < 10:
                ctx.update(truncated="section time cap")
                return {"rows": rows, "host_costs": host_costs, "ok": bool(rows)}
            found = bench_gpu.kernel_rows(name, shape, lengths, ctx.device, dtype, bench_gpu.PEAKS[peaks_key],
                                          ctx.plan.repeats)
            for row in found[:-1]:  # each kernel: the mid case of roofline.kernel_us on its FLOPs and bytes
                row["predicted_us"] = roofline.kernel_us(1e9 * row["gflop"], 1e6 * row["mbytes"], peaks_key, mid)
                row["measured_over_predicted"] = row["us"] / row["predicted_us"]
            layer = found[-1]  # with a flushed L2 the host's launches hide behind the flush: GPU time only
            layer["predicted_us"] = sum(row["predicted_us"] for row in found[:-1])
            layer["measured_over_predicted"] = layer["us"] / layer["predicted_us"]
            hidden, heads, head_size, ffn = shape
            work = roofline.exact_work(lengths, [1] * len(lengths), 1)[0]
            layer["predicted_fused_us"] = roofline.fused_layer_us(  # with its exit head, as fused_us runs it
                roofline.Layer(hidden, heads, head_size, ffn), work, peaks_key, mid, True,
                sum(group[2] for group in work.groups), dtype.itemsize)
            if layer.get("fused_us"):  # issue 29's goal: the fused layer within 2x of its prediction
                layer["fused_over_predicted"] = layer["fused_us"] / layer["predicted_fused_us"]
            rows += [{"size": size, **row} for row in found]
            ctx.update(rows=rows)
    keys = ("size", "shape", "tokens", "us", "host_us", "predicted_us", "measured_over_predicted",
            "predicted_fused_us", "fused_us", "fused_host_us", "fused_over_predicted", "roofline_us",
            "fraction_of_roofline", "sum_of_ops_us")
    layers = [{key: row.get(key) for key in keys} for row in rows if row["op"].startswith("layer")]
    return {"rows": rows, "layers": layers, "host_costs": host_costs,
            "ok": bool(rows) and all(row["us"] > 0 for row in rows)}


SECTION_FUNCTIONS = {
    "environment": section_environment, "pytest": section_pytest, "engine_random": section_engine_random,
    "engine_checkpoint": section_engine_checkpoint, "throughput": section_throughput, "kernels": section_kernels,
    "prewarm": section_prewarm,
}


def run_worker(args) -> int:
    """Run ``args.worker`` sections in order; 3 after a section that raised (the caller starts a fresh worker)."""
    sys.path.insert(0, str(BENCH))
    path = Path(args.results_dir) / JSON_NAME
    results = json.loads(path.read_text())
    ctx = Context(args, results)
    for name in args.worker.split(","):
        section = {"status": "running", "started": time.time()}
        results["sections"][name] = section
        ctx.section = section
        ctx.section_deadline = min(args.deadline, time.time() + CAP_S[name])
        if args.deadline - time.time() < 5:
            section.update(status="skipped", reason="global time budget spent")
            ctx.save()
            continue
        ctx.save()
        print(f"[gpu_check] section {name} (cap {ctx.left():.0f} s)", flush=True)
        raised = False
        try:
            section.update(SECTION_FUNCTIONS[name](ctx))
            section["status"] = "ok" if section.get("ok") else "failed"
        except Skip as reason:
            section.update(status="skipped", reason=str(reason))
        except Exception:  # recorded; the next section runs in a fresh worker
            section.update(status="error", error=traceback.format_exc()[-4000:])
            raised = True
        leaked = forbidden_imports()
        if leaked:
            section.update(status="failed", forbidden_imports=leaked)
        section["seconds"] = round(time.time() - section.pop("started"), 1)
        ctx.save()
        print(f"[gpu_check] section {name}: {section['status']} in {section['seconds']} s", flush=True)
        if raised:
            return 3
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Orchestrator


def write_json(path: Path, results: dict) -> None:
    """Write ``results`` atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def summarize(results: dict) -> dict:
    """Status of every section and the key figures, for a reader of the JSON's first lines."""
    sections = results["sections"]
    summary: dict = {"status": {name: sections.get(name, {}).get("status", "not run") for name in SECTIONS}}
    try:
        pytest_section = sections.get("pytest", {})
        if "totals" in pytest_section:
            summary["pytest"] = {**pytest_section["totals"], "passed_by_dtype": pytest_section["passed_by_dtype"]}
        for name in ("engine_random", "engine_checkpoint"):
            cases = sections.get(name, {}).get("cases", [])
            summary[name] = [{key: case.get(key) for key in ("model", "dtype", "ok", "full_depth_max_abs_diff",
                                                             "max_abs_diff_clear_rows", "exit_layers_equal_fraction",
                                                             "accuracy") if key in case} for case in cases]
        grid = sections.get("throughput", {}).get("results", [])
        if grid:
            summary["throughput_largest_batch"] = [
                {key: row.get(key) for key in ("rows", "batch", "contender", "sentences_per_s",
                                               "speedup_vs_hf_bert_sdpa", "mean_exit_layer", "ms_per_batch",
                                               "host_ms_per_batch", "predicted_ms_per_batch",
                                               "measured_over_predicted")}
                for row in grid if row["batch"] == max(r["batch"] for r in grid if r["rows"] == row["rows"])]
            summary["measured_vs_predicted"] = [
                {key: row.get(key) for key in ("rows", "batch", "contender", "ms_per_batch", "host_ms_per_batch",
                                               "predicted_ms_per_batch", "predicted_ms_range",
                                               "predicted_ms_measured_host_costs", "measured_over_predicted")}
                for row in grid if row["rows"] == grid[0]["rows"]]
        if "layers" in sections.get("kernels", {}):
            summary["kernel_layers"] = sections["kernels"]["layers"]
        if "host_costs" in sections.get("kernels", {}):
            summary["host_costs"] = sections["kernels"]["host_costs"]
        prewarm = sections.get("prewarm", {})
        if "compiled_total" in prewarm:
            summary["prewarm"] = {key: prewarm.get(key) for key in ("seconds", "build_s", "engine_s", "kernel_s",
                                                                    "compiled_total")}
        prediction = sections.get("environment", {}).get("prediction", {})
        if prediction:
            summary["paper_prediction"] = prediction.get("cells", prediction)
    except Exception as error:  # a summary never hides the sections
        summary["error"] = f"{type(error).__name__}: {error}"
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="folder for gpu_check.json (created)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (needs TRITON_INTERPRET=1)")
    parser.add_argument("--payload", type=Path, default=None,
                        help="payload folder (default bench/gpu_payload; the dry run builds a tiny one)")
    parser.add_argument("--budget-s", type=float, default=None, help="global time budget (default 440 s, dry 300 s)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.results_dir = args.results_dir.resolve()
    if args.worker:
        return run_worker(args)

    mode = "dry-run" if args.dry_run else "gpu"
    budget = args.budget_s or BUDGET_S[mode]
    start = time.time()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / JSON_NAME
    command = "bash bench/gpu_check.sh RESULTS_DIR" + (" --dry-run" if args.dry_run else "")
    results = {"check": "costeff_fast GPU check (bench/gpu_check.py)", "command": command, "mode": mode,
               "budget_s": budget, "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "finished": False, "summary": {}, "sections": {}}
    write_json(path, results)
    pending = list(SECTIONS)
    while pending:
        if start + budget - time.time() < 5:
            for name in pending:
                results["sections"][name] = {"status": "skipped", "reason": "global time budget spent"}
            break
        worker = [sys.executable, str(Path(__file__).resolve()), str(args.results_dir), "--worker", ",".join(pending),
                  "--deadline", str(start + budget)]
        worker += ["--dry-run"] if args.dry_run else []
        worker += ["--payload", str(args.payload)] if args.payload else []
        process = subprocess.Popen(worker, cwd=ROOT)
        killed = None
        while process.poll() is None:
            try:
                process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                try:
                    current = json.loads(path.read_text())["sections"]
                except (OSError, ValueError):  # never half-written (atomic), but a reader must not crash
                    continue
                running = next((n for n in pending if current.get(n, {}).get("status") == "running"), None)
                started = current.get(running, {}).get("started", time.time())
                over_cap = running is not None and time.time() > started + CAP_S[running] + 30
                if over_cap or time.time() > start + budget + 10:
                    killed = f"killed by the time guard after {time.time() - started:.0f} s"
                    process.kill()
                    process.wait()
        results = json.loads(path.read_text())
        before = len(pending)
        for name in list(pending):
            section = results["sections"].get(name)
            if section is None:
                continue
            if section.get("status") == "running":
                section.update(status="error", seconds=round(time.time() - section.pop("started"), 1),
                               error=killed or f"worker exited with code {process.returncode} inside this section")
            pending.remove(name)
        if len(pending) == before:  # the worker died before its first section: do not start it again and again
            results["sections"][pending.pop(0)] = {
                "status": "error", "error": f"worker exited with code {process.returncode} before this section"}
        fatal = results["sections"].get("environment", {}).get("fatal")
        if fatal:
            for name in pending:
                results["sections"][name] = {"status": "skipped", "reason": fatal}
            pending = []
        write_json(path, results)
    results.update(summary=summarize(results), finished=True, elapsed_s=round(time.time() - start, 1))
    write_json(path, results)
    print(json.dumps(results["summary"], indent=1, default=str), flush=True)
    print(f"[gpu_check] wrote {path} in {results['elapsed_s']} s", flush=True)
    return 0 if all(s.get("status") in ("ok", "skipped") for s in results["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
