"""costeff_fast.optimize: a Hugging Face BERT classifier and its optimized copy give the same answers."""

from __future__ import annotations

import pytest
import torch
from conftest import random_batch
from transformers import BertConfig, BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

import costeff_fast


@pytest.fixture(scope="module")
def hf_bert():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=101, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=72,
        max_position_embeddings=64, num_labels=3, attn_implementation="sdpa",
    )
    return BertForSequenceClassification(config).eval()


@pytest.mark.parametrize("pairs", [False, True])
def test_logits_and_predictions_equal_hf(hf_bert, pairs):
    batch = random_batch(7, batch=13, vocab=101, max_len=40, pairs=pairs)
    fast = costeff_fast.optimize(hf_bert)
    with torch.inference_mode():
        expected = hf_bert(**batch).logits
    out = fast(**batch)
    assert isinstance(out, SequenceClassifierOutput)
    torch.testing.assert_close(out.logits, expected, atol=1e-4, rtol=0)
    assert torch.equal(out.logits.argmax(-1), expected.argmax(-1))


def test_positional_ids_defaults_and_tuple_output(hf_bert):
    ids = random_batch(8, batch=4, vocab=101)["input_ids"][:, :3].clamp(min=1)  # no padding
    fast = costeff_fast.optimize(hf_bert).eval().to("cpu").to(torch.float32)
    with torch.inference_mode():
        expected = hf_bert(ids).logits
    (logits,) = fast(ids, return_dict=False)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert fast.config is hf_bert.config


def test_bad_inputs_raise_clear_errors(hf_bert):
    fast = costeff_fast.optimize(hf_bert)
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="labels is not supported"):
        fast(ids, labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="output_hidden_states is not supported"):
        fast(ids, output_hidden_states=True)
    with pytest.raises(ValueError, match="right-padded"):
        fast(ids, attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="input_ids is required"):
        fast(attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="CPU only"):
        fast.to("meta")
    with pytest.raises(ValueError, match="float32 only"):
        fast.to(torch.float16)
    with pytest.raises(TypeError, match="BertForSequenceClassification"):
        costeff_fast.optimize(hf_bert.bert)
