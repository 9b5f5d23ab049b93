"""Hugging Face at engine speed: AutoModelForSequenceClassification and pipeline on a COST-EFF checkpoint run the
packed early-exit engine in eval mode, truncate as generate_logits does, and answer as predict does; the training
forward is the reference one, unchanged."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from conftest import make_tiny_model, random_batch
from tokenizers import processors
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerFast, pipeline

import costeff_fast
from costeff_fast import CostEffEngineForSequenceClassification
from costeff_fast.convert import from_encoder_classifier
from costeff_fast.data import load_task
from costeff_fast.inputs import TokenTruncation

#: tolerance of the engine's logits against another batch composition (docs/design.md, Correctness contract)
ATOL = 1e-4


def _checkpoint(directory, model, tokenizer_dir, scale: float):
    """``model`` saved as a checkpoint with ``tokenizer_dir``'s tokenizer, its exits spread by ``scale`` (random
    exits then answer at different layers) and the median exit entropy of 32 rt rows stored as its threshold."""
    with torch.no_grad():
        for exit_head in model.exits:
            exit_head.classifier.weight.mul_(scale)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = list(load_task("rt", max_eval_rows=32)["validation"]["text"])
    with torch.no_grad():
        out = model(**tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"),
                    entropy_threshold=0.0)
    entropies = costeff_fast.exit_entropy(torch.stack(out.exit_logits, dim=1))
    # between two rows' entropies (an even count, midpoint): rows leave at several exits and none is a tie
    model.config.entropy_threshold = torch.quantile(entropies, 0.5, dim=0, interpolation="midpoint").tolist()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, minilm_dir):
    """A 4-layer random model of uneven widths (max_position_embeddings 64) with the real 30k-word tokenizer: the
    engine's max_length is 64, so rt rows joined a few at a time are longer than it."""
    model = make_tiny_model(0, num_labels=2, vocab_size=30522)
    return _checkpoint(tmp_path_factory.mktemp("tiny_costeff"), model, minilm_dir, scale=3.0)


@pytest.fixture(scope="module")
def rows():
    """Short rt rows, rows longer than 64 tokens (and than 512), and text pairs of every length mix."""
    texts = list(load_task("rt", max_eval_rows=24)["validation"]["text"])
    long = [" ".join(texts[i: i + 4]) for i in range(0, 12, 2)] + [" ".join(texts) * 3]
    pairs = [(texts[i], texts[i + 1]) for i in range(0, 6, 2)] + [
        (long[0], texts[0]), (texts[1], long[1]), (long[2], long[3]), (long[4], texts[2][:5])]
    return {"short": texts[:16], "long": long, "pairs": pairs}


def _engine_answers(directory, batch):
    """Labels and softmax scores from ``predict``'s engine (torch backend, the reference path)."""
    engine = costeff_fast.from_pretrained(directory, backend="torch")
    logits, exit_layer = engine.generate_logits(batch, return_exit_layers=True)
    probabilities = logits.softmax(dim=-1)
    return probabilities.argmax(dim=-1), probabilities.max(dim=-1).values, exit_layer, engine


@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize("kind", ["short", "long", "pairs"])
def test_pipeline_labels_and_scores_equal_predict(tiny_checkpoint, rows, kind, batch_size):
    classifier = pipeline("text-classification", model=str(tiny_checkpoint), batch_size=batch_size)
    assert isinstance(classifier.model, CostEffEngineForSequenceClassification)
    assert classifier.model.max_length == 64 and not classifier.model.training
    batch = rows[kind]
    inputs = [{"text": a, "text_pair": b} for a, b in batch] if kind == "pairs" else batch
    answers = classifier(inputs)
    labels, scores, exit_layer, _ = _engine_answers(tiny_checkpoint, batch)
    label2id = classifier.model.config.label2id
    assert [label2id[answer["label"]] for answer in answers] == labels.tolist()
    torch.testing.assert_close(torch.tensor([answer["score"] for answer in answers]), scores, atol=ATOL, rtol=0)
    if kind != "short":
        assert max(len(classifier.tokenizer(*(row if kind == "pairs" else (row,)))["input_ids"]) for row in batch) > 64
    if kind == "short":  # the stored threshold makes rows leave at several exits
        assert len(set(exit_layer.tolist())) >= 2


def test_auto_model_output_equals_generate_logits_on_untruncated_padded_rows(tiny_checkpoint, rows):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint)
    assert isinstance(model, CostEffEngineForSequenceClassification) and model.tokenizer is not None
    texts = rows["short"][:4] + rows["long"][:3]
    encoded = model.tokenizer(texts, padding=True, return_tensors="pt")  # no truncation: 3 rows longer than 64
    assert encoded["input_ids"].shape[1] > 64
    with torch.no_grad():
        out = model(**encoded)
    engine = costeff_fast.from_pretrained(tiny_checkpoint, backend="torch")
    logits, exit_layer = engine.generate_logits(texts, return_exit_layers=True)
    assert type(out).__mro__[1].__name__ == "SequenceClassifierOutput" and out.exit_logits is None
    assert torch.equal(out.exit_layer, exit_layer)
    torch.testing.assert_close(out.logits, logits, atol=ATOL, rtol=0)
    as_tuple = model(**encoded, return_dict=False)
    assert len(as_tuple) == 2 and torch.equal(as_tuple[1], exit_layer)
    explicit = model(**encoded, entropy_threshold=0.0)
    assert explicit.exit_layer.tolist() == [4] * len(texts)


def test_real_minilm_pipeline_equals_predict_on_rows_longer_than_512(tmp_path_factory, minilm_dir, rows):
    torch.manual_seed(0)
    source = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    model = from_encoder_classifier(source).eval()
    directory = _checkpoint(tmp_path_factory.mktemp("minilm_costeff"), model, minilm_dir, scale=40.0)
    batch = rows["short"][:6] + rows["long"][-1:]
    classifier = pipeline("text-classification", model=str(directory), batch_size=4)
    assert classifier.model.max_length == 512
    assert len(classifier.tokenizer(rows["long"][-1])["input_ids"]) > 512
    answers = classifier(batch)
    labels, scores, _, _ = _engine_answers(directory, batch)
    assert [classifier.model.config.label2id[a["label"]] for a in answers] == labels.tolist()
    torch.testing.assert_close(torch.tensor([a["score"] for a in answers]), scores, atol=ATOL, rtol=0)
    pair = [{"text": rows["long"][-1], "text_pair": rows["short"][0]}]
    labels, scores, _, _ = _engine_answers(directory, [(rows["long"][-1], rows["short"][0])])
    answer = classifier(pair)[0]
    assert classifier.model.config.label2id[answer["label"]] == labels.item()
    assert abs(answer["score"] - scores.item()) < ATOL


def _roberta_like(minilm_dir) -> PreTrainedTokenizerFast:
    """The MiniLM vocabulary with RoBERTa's template (``[CLS] A [SEP] [SEP] B [SEP]``, one token type, no
    ``token_type_ids``): pairs must be told apart by their special tokens."""
    bert = AutoTokenizer.from_pretrained(minilm_dir)
    backend = copy.deepcopy(bert.backend_tokenizer)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] [SEP] $B [SEP]",
        special_tokens=[("[CLS]", bert.cls_token_id), ("[SEP]", bert.sep_token_id)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]",
                                   pad_token="[PAD]", model_input_names=["input_ids", "attention_mask"])


@pytest.mark.parametrize("template", ["bert", "roberta"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_token_truncation_equals_the_tokenizers_own(minilm_dir, rows, template, side):
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir) if template == "bert" else _roberta_like(minilm_dir)
    tokenizer.truncation_side = side
    words = rows["short"][:8]
    generator = random.Random(0)
    for max_length in (16, 17, 33):
        truncate = TokenTruncation(tokenizer, max_length)
        for _ in range(30):
            first = " ".join(generator.choices(words, k=generator.randint(1, 3)))[: generator.randint(1, 400)]
            second = None if generator.random() < 0.3 else \
                " ".join(generator.choices(words, k=3))[: generator.randint(0, 400)]
            whole = tokenizer(first, second)
            expected = tokenizer(first, second, truncation=True, max_length=max_length)
            types = whole.get("token_type_ids")
            ids, kinds = truncate(whole["input_ids"], types)
            assert ids == expected["input_ids"], (first, second, max_length)
            if types is not None:
                assert kinds == expected["token_type_ids"]


def test_train_mode_changes_nothing_and_reference_only_arguments_are_refused(tiny_model):
    """The engine model answers the same in train and eval mode (no dropout, no switch to the padded forward),
    and arguments only the reference forward computes name that model instead of being half-honoured."""
    engine_model = CostEffEngineForSequenceClassification.from_model(tiny_model, backend="torch")
    batch = random_batch(3, batch=6, vocab=97)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    engine_model.eval()
    evaluated = engine_model(**batch, labels=labels)
    engine_model.train()
    trained = engine_model(**batch)
    assert torch.equal(trained.logits, evaluated.logits) and torch.equal(trained.exit_layer, evaluated.exit_layer)
    logits, exit_layer, _ = tiny_model.early_exit_reference(**batch)
    torch.testing.assert_close(evaluated.logits, logits, atol=ATOL, rtol=0)
    assert torch.equal(evaluated.exit_layer, exit_layer)
    # the loss is the cross-entropy of the answering exits, computed here independently
    expected = -torch.log_softmax(logits, dim=-1)[torch.arange(6), labels].mean()
    torch.testing.assert_close(evaluated.loss, expected, atol=ATOL, rtol=0)
    for argument in ("output_hidden_states", "output_exit_logits", "gradient_equilibrium"):
        with pytest.raises(ValueError, match=f"{argument}: not supported.*CostEffForSequenceClassification"):
            engine_model(**batch, **{argument: True})
    engine_model.eval()
    with pytest.raises(ValueError, match="labels must be"):
        engine_model(**batch, labels=torch.tensor([0, 1, 3, 0, 1, 2]))


def test_engine_follows_weight_changes_and_refuses_what_it_cannot_do(tiny_model):
    model = CostEffEngineForSequenceClassification(tiny_model.config).eval()
    model.load_state_dict(tiny_model.state_dict())
    model.configure_engine(backend="torch")
    batch = random_batch(4, batch=5, vocab=97)
    with torch.no_grad():
        before = model(**batch, entropy_threshold=0.0).logits
        torch.testing.assert_close(before, tiny_model(**batch, entropy_threshold=0.0).logits, atol=ATOL, rtol=0)
        model.exits[-1].classifier.bias.add_(1.0)  # an in-place edit re-packs the engine
        after = model(**batch, entropy_threshold=0.0).logits
    torch.testing.assert_close(after, before + 1.0, atol=ATOL, rtol=0)
    other = make_tiny_model(9)  # new parameter objects (assign=True) are seen too, not only in-place edits
    model.load_state_dict(other.state_dict(), assign=True)
    with torch.no_grad():
        replaced = model(**batch, entropy_threshold=0.0).logits
        torch.testing.assert_close(replaced, other(**batch, entropy_threshold=0.0).logits, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="inputs_embeds: not supported"):
        model(**batch, inputs_embeds=torch.zeros(5, 3, 32))
    with pytest.raises(ValueError, match="no tokenizer"):
        model(torch.ones(1, 70, dtype=torch.long))
    with pytest.raises(ValueError, match="right-padded"):
        model(batch["input_ids"], attention_mask=batch["attention_mask"].flip(1))


def test_engine_model_saves_and_loads_as_a_plain_checkpoint(tmp_path):
    model = make_tiny_model(5, entropy_threshold=0.3)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert isinstance(loaded, CostEffEngineForSequenceClassification) and loaded.tokenizer is None
    batch = random_batch(6, batch=7, vocab=97)
    with torch.no_grad():
        ours = loaded(**batch)
    logits, exit_layer, _ = model.early_exit_reference(**batch)
    assert torch.equal(ours.exit_layer, exit_layer)
    torch.testing.assert_close(ours.logits, logits, atol=ATOL, rtol=0)
