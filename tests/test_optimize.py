"""costeff_fast.optimize: a Hugging Face BERT classifier and its optimized copy give the same answers."""

from __future__ import annotations

import pytest
import torch
from conftest import random_batch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    pipeline,
)
from transformers.modeling_outputs import SequenceClassifierOutput

import costeff_fast
from costeff_fast.data import load_task


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
    assert isinstance(fast, PreTrainedModel) and isinstance(fast, costeff_fast.CostEffEngineForSequenceClassification)
    with torch.inference_mode():
        expected = hf_bert(ids).logits
    logits, exit_layer = fast(ids, return_dict=False)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert exit_layer.tolist() == [3] * 4  # a converted classifier answers at its last layer only
    assert fast.config.id2label == hf_bert.config.id2label and fast.config.num_labels == 3


def test_bad_inputs_raise_clear_errors(hf_bert):
    fast = costeff_fast.optimize(hf_bert)
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="output_hidden_states: not supported"):
        fast(ids, output_hidden_states=True)
    with pytest.raises(ValueError, match="inputs_embeds: not supported"):
        fast(ids, inputs_embeds=torch.zeros(2, 4, 48))
    with pytest.raises(ValueError, match="right-padded"):
        fast(ids, attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="input_ids is required"):
        fast(attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="no tokenizer"):
        fast.generate_logits(["a sentence"])
    with pytest.raises(TypeError, match="BertForSequenceClassification"):
        costeff_fast.optimize(hf_bert.bert)
    with pytest.raises(ValueError, match="num_threads"):
        costeff_fast.optimize(hf_bert, num_threads=0)


@pytest.fixture(scope="module")
def minilm_classifier(minilm_dir):
    """The packaged MiniLM with a seeded 2-label head (spread so both labels occur) and its tokenizer."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)
    return model, AutoTokenizer.from_pretrained(minilm_dir)


def test_pipeline_of_optimize_equals_the_hf_model_on_real_rt_rows(minilm_classifier):
    model, tokenizer = minilm_classifier
    texts = list(load_task("rt", max_eval_rows=64)["validation"]["text"])
    texts.append(" ".join(texts) * 2)  # longer than 512 tokens: both pipelines must truncate it the same way
    expected = pipeline("text-classification", model=model, tokenizer=tokenizer, truncation=True)(texts, batch_size=8)
    fast = costeff_fast.optimize(model, tokenizer)
    ours = pipeline("text-classification", model=fast, tokenizer=tokenizer)(texts, batch_size=8)
    assert [row["label"] for row in ours] == [row["label"] for row in expected]
    assert len({row["label"] for row in expected}) == 2  # the rows exercise both labels
    for a, b in zip(ours, expected):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
    # the named API on the same model gives the same labels from raw text
    assert fast.predict(texts).tolist() == [model.config.label2id[row["label"]] for row in expected]
