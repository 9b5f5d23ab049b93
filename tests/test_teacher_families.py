"""Conversion of every supported Hugging Face encoder family: BERT, RoBERTa, XLM-R, DistilBERT, ELECTRA.

Each tiny random teacher is converted with ``from_encoder_classifier`` and must reproduce its logits and
hidden states (real tokens) to 1e-5 on a right-padded batch with uneven lengths; ``optimize`` and the engine on
every backend available here must match too (ReLU/GELU heads included).
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertModel,
    ElectraConfig,
    ElectraForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from conftest import AVAILABLE_BACKENDS

import costeff_fast
from costeff_fast import CostEffForSequenceClassification, CostEffEngineForSequenceClassification
from costeff_fast.convert import SUPPORTED_TEACHERS, from_bert, from_encoder_classifier

VOCAB = 100
#: head size 16, the smallest the triton kernels take, so every backend runs every family
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=48, num_labels=3)


def randomize(model, seed: int, std: float = 0.2):
    """Replace every parameter by N(0, std) so heads, biases and LayerNorms all matter (HF's init is near zero)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, std)
    return model


def make_teacher(family: str, seed: int = 0, bare: bool = False):
    """A tiny random HF teacher in train mode (as a freshly built model is)."""
    torch.manual_seed(seed)
    if family == "bert":
        model = BertForSequenceClassification(BertConfig(**SHAPE))
    elif family == "roberta":
        config = RobertaConfig(**SHAPE, pad_token_id=1, type_vocab_size=1)
        model = RobertaModel(config) if bare else RobertaForSequenceClassification(config)
    elif family == "xlm-roberta":  # pad 2: the position offset follows pad_token_id, not a constant 2
        model = XLMRobertaForSequenceClassification(XLMRobertaConfig(**SHAPE, pad_token_id=2, type_vocab_size=1))
    elif family == "distilbert":
        config = DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=37,
                                  max_position_embeddings=48, num_labels=3)
        model = DistilBertModel(config) if bare else DistilBertForSequenceClassification(config)
    elif family == "electra":
        model = ElectraForSequenceClassification(ElectraConfig(**SHAPE, embedding_size=64))
    else:
        raise ValueError(family)
    return randomize(model, seed)


FAMILIES = ["bert", "roberta", "xlm-roberta", "distilbert", "electra"]
USES_TOKEN_TYPES = {"bert", "electra"}


def padded_batch(family: str, pad_id: int, seed: int = 0, batch: int = 6, max_len: int = 19):
    """Right-padded batch with uneven lengths (one full row); real tokens avoid the pad id, padding is the pad id."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (batch,), generator=generator)
    lengths[0] = max_len
    mask = (torch.arange(max_len)[None, :] < lengths[:, None]).long()
    ids = torch.randint(0, VOCAB - 1, (batch, max_len), generator=generator)
    ids = ids + (ids >= pad_id).long()  # skip the pad id
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_id))
    out = {"input_ids": ids, "attention_mask": mask}
    if family in USES_TOKEN_TYPES:
        split = (lengths.float() * torch.rand(batch, generator=generator)).long()
        out["token_type_ids"] = (torch.arange(max_len)[None, :] >= split[:, None]).long() * mask
    return out


def pad_id_of(teacher) -> int:
    return teacher.config.pad_token_id


def max_real_diff(a, b, mask):
    return (a - b)[mask.bool()].abs().max().item()


@pytest.mark.parametrize("family", FAMILIES)
def test_converted_teacher_reproduces_logits_and_hidden_states(family):
    teacher = make_teacher(family).eval()
    batch = padded_batch(family, pad_id_of(teacher))
    model = from_encoder_classifier(teacher)
    with torch.no_grad():
        theirs = teacher(**batch, output_hidden_states=True)
        ours = model(**batch, output_hidden_states=True, entropy_threshold=0.0)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 3
    for index, (a, b) in enumerate(zip(theirs.hidden_states, ours.hidden_states)):
        assert max_real_diff(a, b, batch["attention_mask"]) < 1e-5, f"hidden state {index}"
    assert theirs.logits.abs().max() > 0.1  # the head is not negligible, so a wrong head would show
    torch.testing.assert_close(ours.exit_logits[-1], theirs.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=0)
    assert model.config.exit_pooler == [False, True]
    assert model.config.num_attention_heads == [4, 4] and model.config.intermediate_size == [37, 37]


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta"])
def test_position_offset_matters(family):
    """Sensitivity: RoBERTa positions start at pad_token_id + 1; reading rows from 0 would change the output."""
    teacher = make_teacher(family).eval()
    batch = padded_batch(family, pad_id_of(teacher))
    seq = batch["input_ids"].shape[1]
    with torch.no_grad():
        right = teacher(**batch).logits
        unshifted = teacher(**batch, position_ids=torch.arange(seq)[None].expand_as(batch["input_ids"])).logits
    assert (right - unshifted).abs().max() > 1e-3
    model = from_encoder_classifier(teacher)
    offset = teacher.config.pad_token_id + 1
    assert model.config.max_position_embeddings == teacher.config.max_position_embeddings - offset
    torch.testing.assert_close(model.embeddings.position_embeddings.weight,
                               teacher.roberta.embeddings.position_embeddings.weight[offset:], atol=0, rtol=0)


@pytest.mark.parametrize("family, activation", [("distilbert", "relu"), ("electra", "gelu"), ("roberta", "tanh")])
def test_head_activation_is_kept_and_matters(family, activation):
    teacher = make_teacher(family).eval()
    batch = padded_batch(family, pad_id_of(teacher))
    model = from_encoder_classifier(teacher)
    assert model.config.exit_pooler_activation == activation
    last = model.exits[-1]
    assert last.pooler_activation == activation
    with torch.no_grad():
        expected = teacher(**batch).logits
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
        pooler = last.dense
        with_tanh = last.classifier(torch.tanh(pooler(hidden[:, 0])))
    if activation == "tanh":
        torch.testing.assert_close(with_tanh, expected, atol=1e-5, rtol=0)
    else:  # computing tanh instead would be caught by the equality test above
        assert (with_tanh - expected).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_conversion_returns_eval_mode_in_source_dtype(family):
    teacher = make_teacher(family)
    assert teacher.training
    model = from_encoder_classifier(teacher)
    assert not any(module.training for module in model.modules())
    assert from_bert(teacher.double()).dtype == torch.float64
    assert not from_bert(teacher).training


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_bare_encoders_convert_with_num_labels(family):
    teacher = make_teacher(family, bare=True).eval()
    batch = padded_batch(family, pad_id_of(teacher))
    with pytest.raises(ValueError, match="num_labels is required"):
        from_encoder_classifier(teacher)
    model = from_encoder_classifier(teacher, num_labels=2)
    assert model.config.exit_pooler == [False, False] and model.config.exit_pooler_activation == "tanh"
    with torch.no_grad():
        theirs = teacher(**batch, output_hidden_states=True).hidden_states
        ours = model(**batch, output_hidden_states=True).hidden_states
    for a, b in zip(theirs, ours):
        assert max_real_diff(a, b, batch["attention_mask"]) < 1e-5


def test_directory_source_and_saved_relu_model_round_trip(tmp_path):
    teacher = make_teacher("distilbert").eval()
    teacher.save_pretrained(tmp_path / "teacher")
    model = from_encoder_classifier(str(tmp_path / "teacher"))
    model.save_pretrained(tmp_path / "converted")
    loaded = CostEffForSequenceClassification.from_pretrained(tmp_path / "converted").eval()
    assert loaded.config.exit_pooler_activation == "relu"
    batch = padded_batch("distilbert", pad_id_of(teacher))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).exit_logits[-1], teacher(**batch).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_engine_equals_source(family, backend):
    """optimize() and every backend reproduce the source's logits, ReLU/GELU heads (DistilBERT, ELECTRA) included."""
    teacher = make_teacher(family).eval()
    batch = padded_batch(family, pad_id_of(teacher), seed=3, batch=9)
    with torch.inference_mode():
        expected = teacher(**batch).logits
    if backend == "native":
        torch.testing.assert_close(costeff_fast.optimize(teacher)(**batch).logits, expected, atol=1e-5, rtol=0)
    converted = from_encoder_classifier(teacher)
    engine = CostEffEngineForSequenceClassification.from_model(converted, tokenizer=None, backend=backend)
    logits = engine.generate_logits(batch, entropy_threshold=0.0)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_electra_with_embedding_projection_is_refused():
    teacher = ElectraForSequenceClassification(ElectraConfig(**{**SHAPE, "hidden_size": 32}, embedding_size=16))
    with pytest.raises(ValueError, match="embedding_size=16 != hidden_size=32"):
        from_encoder_classifier(teacher)


def test_other_hidden_activation_is_refused():
    teacher = BertForSequenceClassification(BertConfig(**SHAPE, hidden_act="gelu_new"))
    with pytest.raises(ValueError, match="hidden_act='gelu_new'"):
        from_encoder_classifier(teacher)


@pytest.mark.parametrize("source", [
    GPT2ForSequenceClassification(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=4, num_labels=3)),
    torch.nn.Linear(2, 2),
])
def test_unsupported_class_raises_type_error_listing_supported(source):
    with pytest.raises(TypeError, match=f"cannot convert a {type(source).__name__}") as caught:
        from_encoder_classifier(source)
    for name in SUPPORTED_TEACHERS:
        assert name in str(caught.value)
    assert len(SUPPORTED_TEACHERS) == 10
    with pytest.raises(TypeError, match="RobertaForSequenceClassification, XLMRobertaForSequenceClassification"):
        costeff_fast.optimize(source)
