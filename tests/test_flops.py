"""FLOP and parameter accounting."""

from __future__ import annotations

import pytest
from transformers import BertConfig, BertForSequenceClassification

from costeff_fast import CostEffConfig
from costeff_fast.convert import from_bert
from costeff_fast.flops import layer_flops, model_flops, parameter_counts


def test_one_layer_count_by_hand():
    config = BertConfig(hidden_size=4, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, num_labels=2)
    # n=3 tokens: QKV 2*3*4*12 + W_O 2*3*4*4 + QK^T and PV 2*2*3*3*4 + FFN 2*2*3*4*8; pooler 2*4*4 + classifier 2*4*2.
    assert layer_flops(config, 0, 3) == 288 + 96 + 144 + 384
    assert model_flops(config, [3], every_exit=False) == 912 + 32 + 16


def test_the_8x_shape_has_the_documented_flop_ratio():
    """BERT-base vs 12 x (2 heads of 64, FFN 256) at 128 padded tokens: 8.88x fewer layer FLOPs (issue #5)."""
    bert = BertConfig()
    slim = CostEffConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=2, attention_head_size=64,
                         intermediate_size=256, embedding_rank=128)
    ratio = model_flops(bert, [128], every_exit=False) / model_flops(slim, [128], every_exit=False)
    assert ratio == pytest.approx(8.88, abs=0.01)


def test_early_exit_and_real_lengths_reduce_flops():
    config = CostEffConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, attention_head_size=8,
                           intermediate_size=16, num_labels=2)
    full = model_flops(config, [10, 20])
    assert model_flops(config, [10, 20], [1, 4]) < full
    assert model_flops(config, [10, 20], [4, 4]) == full
    assert model_flops(config, [10, 20], [2, 2]) == sum(layer_flops(config, l, n) for l in range(2) for n in (10, 20)) + 4 * 2 * 32 * 2
    with pytest.raises(ValueError, match="exit layer"):
        model_flops(config, [10], [5])
    with pytest.raises(ValueError, match="rows"):
        model_flops(config, [10, 20], [1])


def test_parameter_counts_agree_for_a_converted_bert():
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, num_labels=3)
    bert = BertForSequenceClassification(config)
    converted = from_bert(bert)
    assert parameter_counts(converted)["encoder"] == parameter_counts(bert)["encoder"]
    # The converted model adds one exit classifier per extra layer: (16 * 3 + 3) parameters.
    assert parameter_counts(converted)["total"] == parameter_counts(bert)["total"] + 16 * 3 + 3
