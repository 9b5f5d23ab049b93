"""Reference model: conversion from HF BERT, save/load, config checks, gradient equilibrium."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model, random_batch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
)

from costeff_fast import CostEffConfig, CostEffEngineForSequenceClassification, CostEffForSequenceClassification
from costeff_fast.convert import from_bert
from costeff_fast.modeling import gradient_rescale


def small_bert(num_labels=None, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=80, max_position_embeddings=40)
    if num_labels is None:
        return BertModel(config).eval()
    config.num_labels = num_labels
    return BertForSequenceClassification(config).eval()


def masked_max_diff(a, b, mask):
    return (a - b)[mask.bool()].abs().max().item()


@pytest.mark.parametrize("with_head", [False, True])
def test_from_bert_random_hidden_states_and_logits_equal_hf(with_head):
    bert = small_bert(num_labels=3 if with_head else None)
    model = from_bert(bert, num_labels=None if with_head else 3).eval()
    batch = random_batch(0, batch=5, vocab=120, max_len=30, pairs=True)
    with torch.no_grad():
        hf = bert(**batch, output_hidden_states=True)
        ours = model(**batch, output_hidden_states=True)
    assert len(ours.hidden_states) == len(hf.hidden_states) == 4
    for theirs, mine in zip(hf.hidden_states, ours.hidden_states):
        assert masked_max_diff(theirs, mine, batch["attention_mask"]) < 1e-5
    if with_head:
        torch.testing.assert_close(ours.exit_logits[-1], hf.logits, atol=1e-5, rtol=0)
        assert model.config.exit_pooler == [False, False, True]


def test_from_bert_real_minilm_equals_hf(minilm_dir):
    hf = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = from_bert(hf).eval()
    batch = tokenizer(["a gripping, beautifully shot film", "dull."], ["", "the plot never moves"],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf(**batch, output_hidden_states=True)
        ours = model(**batch, output_hidden_states=True)
    for a, b in zip(theirs.hidden_states, ours.hidden_states):
        assert masked_max_diff(a, b, batch["attention_mask"]) < 1e-5
    torch.testing.assert_close(ours.exit_logits[-1], theirs.logits, atol=1e-5, rtol=0)
    assert model.config.num_attention_heads == [12] * 6 and model.config.attention_head_size == 32


def test_from_bert_directory_and_bad_inputs(tmp_path):
    bert = small_bert(num_labels=2)
    bert.save_pretrained(tmp_path)
    model = from_bert(str(tmp_path))
    assert model.config.num_labels == 2 and model.exits[-1].dense is not None
    with pytest.raises(ValueError, match="num_labels is required"):
        from_bert(small_bert())
    with pytest.raises(ValueError, match="conflicts"):
        from_bert(bert, num_labels=5)
    with pytest.raises(TypeError, match="BertModel"):
        from_bert(torch.nn.Linear(2, 2))


def test_save_load_round_trip_with_auto_classes(tmp_path):
    model = make_tiny_model(3, entropy_threshold=[0.5, 0.4, 0.3, 0.2])
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).num_attention_heads == [2, 1, 3, 2]
    loaded = AutoModel.from_pretrained(tmp_path).eval()  # the trainable reference model
    assert type(loaded) is CostEffForSequenceClassification
    assert loaded.config.intermediate_size == [16, 40, 7, 24] and loaded.config.embedding_rank == 12
    batch = random_batch(1, batch=4, vocab=97)
    with torch.no_grad():
        for a, b in zip(model(**batch).exit_logits, loaded(**batch).exit_logits):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    engine = AutoModelForSequenceClassification.from_pretrained(tmp_path)  # the engine, same files
    assert isinstance(engine, CostEffEngineForSequenceClassification)
    logits, exit_layer, _ = model.early_exit_reference(**batch)
    out = engine(**batch)
    assert torch.equal(out.exit_layer, exit_layer)
    torch.testing.assert_close(out.logits, logits, atol=1e-4, rtol=0)


def test_eval_forward_uses_threshold_and_training_forward_does_not(tiny_model):
    batch = random_batch(2, batch=8, vocab=97)
    out = tiny_model(**batch, entropy_threshold=100.0)
    assert out.exit_layer.tolist() == [1] * 8
    torch.testing.assert_close(out.logits, out.exit_logits[0])
    tiny_model.train()
    out = tiny_model(**batch, entropy_threshold=100.0)
    assert out.exit_layer.tolist() == [4] * 8


@pytest.mark.parametrize(
    "fields, error, match",
    [
        ({"num_attention_heads": [2, 2]}, ValueError, "num_hidden_layers=4"),
        ({"intermediate_size": [8, 0, 8, 8]}, ValueError, r"intermediate_size\[1\] must be an int >= 1"),
        ({"entropy_threshold": -1.0}, ValueError, ">= 0"),
        ({"entropy_threshold": "low"}, TypeError, "entropy_threshold"),
        ({"embedding_rank": 99}, ValueError, "embedding_rank"),
        ({"hidden_act": "relu"}, ValueError, "gelu"),
    ],
)
def test_config_rejects_bad_values(fields, error, match):
    base = dict(hidden_size=32, num_hidden_layers=4, attention_head_size=8)
    with pytest.raises(error, match=match):
        CostEffConfig(**{**base, **fields})


def test_too_long_input_raises_clear_error(tiny_model):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        tiny_model(torch.ones(1, 65, dtype=torch.long))


def test_forward_refuses_inputs_it_would_misread(tiny_model):
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    reference = tiny_model(ids, attention_mask=mask, labels=torch.tensor([0, 2]))  # the valid batch passes
    narrow = tiny_model(ids.int(), attention_mask=mask.bool(), labels=torch.tensor([0, 2], dtype=torch.int32))
    torch.testing.assert_close(narrow.loss, reference.loss)  # int32 ids and labels, a bool mask: same answer
    cases = [
        (dict(input_ids=ids.float()), TypeError, r"input_ids must be an integer tensor .* got dtype torch\.float32"),
        (dict(attention_mask=mask.float()), TypeError, r"attention_mask must be an integer or bool tensor"),
        (dict(input_ids=ids.clone().fill_(97)), ValueError, r"input_ids must lie in \[0, vocab_size=97\)"),
        (dict(token_type_ids=torch.full_like(ids, 2)), ValueError, r"token_type_ids must lie in \[0, type_vocab_size=2\)"),
        (dict(attention_mask=mask.flip(1)), ValueError, r"right-padded"),  # left padding: positions would be wrong
        (dict(attention_mask=mask * 2), ValueError, r"right-padded \(ones, then zeros\)"),
        (dict(labels=torch.tensor([0, 3])), ValueError, r"labels must lie in \[0, num_labels=3\)"),
        (dict(labels=torch.tensor([0, -100])), ValueError, r"-100 is not supported"),
        (dict(attention_mask=[[1, 1, 1], [1, 1, 0]]), TypeError, r"attention_mask must be a torch tensor"),
        (dict(labels=torch.tensor([0.0, 1.0])), ValueError, r"labels must be a \[batch\] integer tensor of 2"),
        (dict(labels=torch.tensor([0])), ValueError, r"labels must be a \[batch\] integer tensor of 2"),
    ]
    for change, error, match in cases:
        arguments = {"input_ids": ids, "attention_mask": mask, **change}
        with pytest.raises(error, match=match):
            tiny_model(**arguments)
    with pytest.raises(ValueError, match="right-padded"):
        tiny_model.early_exit_reference(ids, attention_mask=mask.flip(1))


def test_gradient_rescale_identity_forward_scaled_backward():
    x = torch.randn(3, 4, requires_grad=True)
    y = gradient_rescale(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.arange(12.0).view(3, 4)).sum().backward()
    torch.testing.assert_close(x.grad, 0.25 * torch.arange(12.0).view(3, 4))


def expected_equilibrium_scale(layer: int, exit_: int, num_layers: int) -> float:
    """Gradient factor from exit j into layer l's output (1-based), following the spec step by step."""
    scale = 1.0 / (num_layers - layer + 1)  # at layer l's output, shared by its exit and layer l+1
    for depth in range(layer, exit_):
        scale *= num_layers - depth  # into layer depth+1
        scale *= 1.0 / (num_layers - depth)  # at layer depth+1's output: 1/(L-(depth+1)+1)
    # The factors telescope: every exit's gradient reaches layer l scaled by 1/(L-l+1), i.e. layer l
    # averages the L-l+1 losses that depend on it (Li et al. 2019).
    assert abs(scale - 1.0 / (num_layers - layer + 1)) < 1e-12
    return scale


@pytest.mark.parametrize("layer, exit_", [(1, 1), (1, 2), (1, 4), (2, 3), (3, 3), (4, 4)])
def test_gradient_equilibrium_scales_layer_gradients_as_specified(tiny_model, layer, exit_):
    """Exit j's loss reaches layer l's output scaled by 1/(L-l+1), times (L-m)/(L-m+1) per deeper layer."""
    batch = random_batch(7, batch=3, vocab=97)

    def layer_grad(equilibrium):
        tiny_model.zero_grad()
        captured = {}

        def keep(module, inputs, output):
            output.retain_grad()
            captured["h"] = output

        handle = tiny_model.layers[layer - 1].register_forward_hook(keep)
        tiny_model(**batch, gradient_equilibrium=equilibrium).exit_logits[exit_ - 1].sum().backward()
        handle.remove()
        return captured["h"].grad.clone()

    expected = expected_equilibrium_scale(layer, exit_, num_layers=4)
    torch.testing.assert_close(layer_grad(True), layer_grad(False) * expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("exit_pooling", ["cls", "mean"])
def test_padded_forward_equals_per_row_reference(exit_pooling):
    """Padding must not leak into any exit (the mean exit averages real tokens only)."""
    model = make_tiny_model(4, exit_pooling=exit_pooling)
    batch = random_batch(4, batch=7, vocab=97, max_len=25, pairs=True)
    with torch.no_grad():
        padded = model(**batch).exit_logits[-1]
    per_row, layers, _ = model.early_exit_reference(**batch, entropy_threshold=0.0)
    assert layers.tolist() == [4] * 7
    torch.testing.assert_close(padded, per_row, atol=1e-5, rtol=0)


def test_mean_pooled_exit_reads_token_means_and_pooled_exit_reads_cls():
    model = make_tiny_model(5, exit_pooling="mean")
    assert [head.pooling for head in model.exits] == ["mean", "cls", "mean", "mean"]
    hidden = torch.randn(2, 3, 32)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    head = model.exits[0]
    expected = head.classifier(torch.tanh(torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)])))
    torch.testing.assert_close(head(hidden, mask), expected)
    with pytest.raises(ValueError, match="exit_pooling"):
        CostEffConfig(exit_pooling="max")
