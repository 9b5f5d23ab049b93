"""pytest-benchmark: whole models on the same rt inputs in one run, grouped as the issue's comparisons.

Run: ``pytest bench/ --benchmark-only [--bench-threads N]``; set ``COSTEFF_BENCH_COSTEFF`` and
``COSTEFF_BENCH_TEACHER`` to a trained checkpoint and its teacher to time them (default: shape-only stand-ins,
see ``workloads.load_models``). Each benchmark's ``extra_info`` holds sentences/s, executed GFLOP/s and the
fraction of a ``torch.mm`` peak measured in the same session. Rounds are few: ``bench/run_cpu.py`` is the
measurement of record.
"""

from __future__ import annotations

import os

import pytest
import torch
import peers
import workloads as wl

import costeff_fast
from costeff_fast import CostEffForSequenceClassification
from costeff_fast import CostEffEngineForSequenceClassification


@pytest.fixture(scope="session")
def peak_gflops():
    return wl.mm_peak_gflops()


@pytest.fixture(scope="module")
def contenders():
    costeff_dir, teacher_dir = os.environ.get("COSTEFF_BENCH_COSTEFF"), os.environ.get("COSTEFF_BENCH_TEACHER")
    texts = list(wl.rt_split()[0])
    teacher, full_width, costeff, reference = wl.load_models(costeff_dir, teacher_dir)
    tau, _ = wl.early_exit_threshold(costeff, reference, texts[:64], trained=costeff_dir is not None)
    bert = wl.random_bert_base()
    torch.manual_seed(0)
    eight_x = CostEffEngineForSequenceClassification.from_model(CostEffForSequenceClassification(wl.costeff_8x_config()).eval(), wl.tokenizer(),
                                     num_threads=None)
    groups = {
        "rt batch 64": wl.teacher_group(teacher, full_width, costeff, tau, texts[:64]),
        "BERT-base real-length batch 32": {
            "hf_bert_base_sdpa": wl.hf_contender(bert, texts[:32], 32),
            "optimize_bert_base": wl.hf_contender(costeff_fast.optimize(bert), texts[:32], 32, packed=True,
                                                  config=bert.config),
        },
        "8x full depth vs BERT-base 128 padded, batch 32": {
            "costeff_8x_full_depth": wl.engine_contender(eight_x, list(wl.full_length_texts(32)), 32, 0.0),
            "hf_bert_base_128_padded": wl.hf_contender(bert, list(wl.full_length_texts(32)), 32, pad_to_max=True),
        },
        "streaming vs per-batch, batch 64": wl.streaming_contenders(costeff, texts[:256], 64, tau),
        "rt batch 64 peers": {"costeff_early_exit": wl.engine_contender(costeff, texts[:64], 64, tau),
                              "hf_teacher": wl.hf_contender(teacher, texts[:64], 64),
                              **peers.build_peers(teacher, reference, costeff.tokenizer, tau, texts[:64],
                                                  torch.get_num_threads())[0]},
    }
    return {(group, name): contender for group, members in groups.items() for name, contender in members.items()}


CASES = [
    ("rt batch 64", "hf_teacher"), ("rt batch 64", "costeff_full_width_no_exit"), ("rt batch 64", "costeff_no_exit"),
    ("rt batch 64", "costeff_early_exit"),
    ("BERT-base real-length batch 32", "hf_bert_base_sdpa"), ("BERT-base real-length batch 32", "optimize_bert_base"),
    ("8x full depth vs BERT-base 128 padded, batch 32", "costeff_8x_full_depth"),
    ("8x full depth vs BERT-base 128 padded, batch 32", "hf_bert_base_128_padded"),
    ("streaming vs per-batch, batch 64", "per_batch_compaction"), ("streaming vs per-batch, batch 64", "streaming"),
] + [("rt batch 64 peers", name) for name in (
    "hf_teacher", "costeff_early_exit", "optimize_teacher", "optimize_int8_teacher", "torch_dynamic_int8_teacher",
    "ort_fp32_fused_teacher", "ort_int8_teacher", "costeff_int8_no_exit", "costeff_int8_early_exit",
    "ort_costeff_no_exit")]


@pytest.mark.parametrize("group,name", CASES, ids=[f"{g}: {n}" for g, n in CASES])
def test_model(benchmark, contenders, peak_gflops, group, name):
    if (group, name) not in contenders:
        pytest.skip(f"{name} not built here: ORT peers need onnxruntime (pip install 'costeff_fast[bench]')")
    contender = contenders[(group, name)]
    benchmark.group = group
    benchmark.pedantic(contender.fn, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(wl.report(contender, benchmark.stats.stats.median, peak_gflops))
