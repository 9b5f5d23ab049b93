"""Tests of the one batched-prediction helper and the forwards built on it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from conftest import make_tiny_model, random_batch
from costeff_fast.training.prediction import exit_accuracies, exit_logits, hf_predict, minibatches, predict

TEXTS = ["a fine film", "dull , slow and far too long for what it says", "yes", "the best hour of the year",
         "no", "it is what it is"]


def test_minibatches_cut_in_order():
    assert minibatches(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert minibatches([], 4) == []
    with pytest.raises(ValueError, match="batch_size"):
        minibatches([1], 0)


def test_predict_concatenates_tensors_and_tuples_in_order():
    batches = minibatches(torch.arange(10), 4)
    torch.testing.assert_close(predict(lambda b: b * 2, batches), torch.arange(10) * 2)
    doubled, squares = predict(lambda b: (b * 2, (b**2)[:, None]), batches)
    torch.testing.assert_close(doubled, torch.arange(10) * 2)
    assert squares.shape == (10, 1) and squares[9, 0] == 81
    assert torch.is_inference(predict(lambda b: b.float(), batches))  # run under torch.inference_mode
    with pytest.raises(ValueError, match="at least one batch"):
        predict(lambda b: b, [])


def test_exit_accuracies_match_a_manual_count():
    model = make_tiny_model(num_labels=3)
    batches = []
    for seed in range(3):
        batch = random_batch(seed, 5, model.config.vocab_size)
        batch["labels"] = torch.randint(0, 3, (5,), generator=torch.Generator().manual_seed(seed))
        batches.append(batch)
    model.train()
    accuracies = exit_accuracies(model, batches)
    assert not model.training
    correct = torch.zeros(model.config.num_hidden_layers)
    with torch.no_grad():
        for batch in batches:
            out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            correct += torch.stack([(z.argmax(-1) == batch["labels"]).sum() for z in out.exit_logits]).float()
    assert accuracies == pytest.approx((correct / 15).tolist())


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


def test_hf_predict_does_not_depend_on_the_batch_size(tokenizer):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=16, num_labels=2)).eval()
    one = hf_predict(model, tokenizer, TEXTS, 1, 32)
    four = hf_predict(model, tokenizer, TEXTS, 4, 32)
    assert one.shape == (len(TEXTS), 2) and one.dtype == torch.float32
    torch.testing.assert_close(four, one, rtol=1e-4, atol=1e-5)
    pairs = list(zip(TEXTS, reversed(TEXTS)))
    torch.testing.assert_close(hf_predict(model, tokenizer, pairs, 4, 32), hf_predict(model, tokenizer, pairs, 6, 32),
                               rtol=1e-4, atol=1e-5)


def test_exit_logits_stack_every_exit_and_do_not_depend_on_the_batch_size(tokenizer):
    model = make_tiny_model(vocab_size=tokenizer.vocab_size, num_labels=2)
    whole = exit_logits(model, tokenizer, TEXTS, batch_size=len(TEXTS), max_length=16)
    assert whole.shape == (len(TEXTS), model.config.num_hidden_layers, 2)
    torch.testing.assert_close(exit_logits(model, tokenizer, TEXTS, batch_size=2, max_length=16), whole,
                               rtol=1e-4, atol=1e-5)
