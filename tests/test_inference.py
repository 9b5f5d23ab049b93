"""Public API: from_pretrained, generate_logits, predict, input checks; real MiniLM on real rt text."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model, random_batch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, pipeline

import costeff_fast
from costeff_fast import CostEffEngineForSequenceClassification, CostEffForSequenceClassification
from costeff_fast.convert import from_bert
from costeff_fast.data import load_task


@pytest.fixture(scope="module")
def minilm_checkpoint(tmp_path_factory, minilm_dir):
    """The packaged MiniLM converted to a 6-exit COST-EFF checkpoint (random exits) with its tokenizer."""
    torch.manual_seed(0)
    hf = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    model = from_bert(hf).eval()
    with torch.no_grad():  # spread the untrained exits' logits so entropies differ between rows
        for exit_head in model.exits:
            exit_head.classifier.weight.mul_(40.0)
    directory = tmp_path_factory.mktemp("minilm_costeff")
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def rt_texts():
    return list(load_task("rt", max_eval_rows=48)["validation"]["text"])


def test_real_minilm_engine_matches_per_sample_reference(minilm_checkpoint, rt_texts):
    engine = costeff_fast.from_pretrained(minilm_checkpoint, backend="torch")
    reference = CostEffForSequenceClassification.from_pretrained(minilm_checkpoint).eval()
    encoded = engine.tokenizer(rt_texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        entropies = costeff_fast.exit_entropy(torch.stack(reference(**encoded).exit_logits, dim=1))
    tau = entropies.median(dim=0).values.tolist()
    logits, layers = engine.generate_logits(rt_texts, entropy_threshold=tau, return_exit_layers=True)
    ref_logits, ref_layers, _ = reference.early_exit_reference(**encoded, entropy_threshold=tau)
    ties = ((entropies[:, :-1] - torch.tensor(tau[:-1])).abs() < 1e-5).any(dim=1)
    assert (~ties).sum() >= 40 and len(set(layers.tolist())) >= 3
    assert torch.equal(layers[~ties], ref_layers[~ties])
    torch.testing.assert_close(logits[~ties], ref_logits[~ties], atol=1e-4, rtol=0)


def test_pipeline_and_auto_classes_load_the_checkpoint(minilm_checkpoint, rt_texts):
    classifier = pipeline("text-classification", model=str(minilm_checkpoint))
    assert isinstance(classifier.model, CostEffForSequenceClassification)
    labels = [classifier.model.config.label2id[row["label"]] for row in classifier(list(rt_texts[:8]))]
    engine = costeff_fast.from_pretrained(minilm_checkpoint, entropy_threshold=0.0, backend="torch")
    assert labels == engine.predict(list(rt_texts[:8])).tolist()


def test_text_pairs_equal_tokenizer_pairs(minilm_checkpoint):
    engine = costeff_fast.from_pretrained(minilm_checkpoint, backend="torch")
    pairs = [("is the sky blue?", "the sky is blue on clear days."), ("a question", "a passage")]
    encoded = engine.tokenizer([p[0] for p in pairs], [p[1] for p in pairs], padding=True, return_tensors="pt")
    torch.testing.assert_close(engine.generate_logits(pairs), engine.generate_logits(dict(encoded)), atol=0, rtol=0)
    assert int(encoded["token_type_ids"].sum()) > 0


def test_long_text_is_truncated_to_the_model_limit(minilm_checkpoint):
    engine = costeff_fast.from_pretrained(minilm_checkpoint, backend="torch")
    assert engine.generate_logits(["word " * 2000]).shape == (1, 2)


def test_from_pretrained_errors(tmp_path, minilm_dir):
    with pytest.raises(FileNotFoundError, match="config.json"):
        costeff_fast.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a COST-EFF"):
        costeff_fast.from_pretrained(minilm_dir)
    make_tiny_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="backend must be one of"):
        costeff_fast.from_pretrained(tmp_path, backend="cuda-magic")
    with pytest.raises(ValueError, match="num_threads"):
        costeff_fast.from_pretrained(tmp_path, num_threads=0)
    with pytest.raises(ValueError, match=">= 0"):
        costeff_fast.from_pretrained(tmp_path, entropy_threshold=-0.5)


def test_config_threshold_is_the_default_and_call_overrides_it(tmp_path):
    model = make_tiny_model(entropy_threshold=100.0)
    engine = CostEffEngineForSequenceClassification.from_model(model, None, backend="torch")
    batch = random_batch(0, batch=5, vocab=97)
    assert engine.generate_logits(batch, return_exit_layers=True)[1].tolist() == [1] * 5
    assert engine.generate_logits(batch, entropy_threshold=0.0, return_exit_layers=True)[1].tolist() == [4] * 5


@pytest.mark.parametrize(
    "batch, error, match",
    [
        ("just a string", TypeError, "wrap a single string"),
        (42, TypeError, "batch must be"),
        (["fine", 3], TypeError, "strings or"),
        (["single", ("text", "pair")], ValueError, "mixes single texts"),
        ([("a", "b", "c")], ValueError, "two strings"),
        (("is it raining?", "the sky is clear"), ValueError, r"\[\(text, text_pair\)\] for one pair"),
        ({"attention_mask": [[1]]}, ValueError, "needs 'input_ids'"),
        ({"input_ids": [[]]}, ValueError, "empty row"),
        ({"input_ids": [[1, 2], [3]], "token_type_ids": [[0, 0]]}, ValueError, "same lengths"),
        ({"input_ids": torch.tensor([[5, 6, 0]]), "attention_mask": torch.tensor([[0, 1, 1]])}, ValueError, "right-padded"),
        ({"input_ids": torch.tensor([[5, 600]])}, ValueError, "vocab_size"),
        ({"input_ids": torch.ones(1, 70, dtype=torch.long)}, ValueError, "max_position_embeddings"),
        ({"input_ids": torch.ones(3, dtype=torch.long)}, ValueError, r"\[batch, seq\]"),
    ],
)
def test_bad_batches_raise_clear_errors(tiny_model, minilm_checkpoint, batch, error, match):
    engine = costeff_fast.from_pretrained(minilm_checkpoint, backend="torch") if isinstance(batch, (str, list, tuple)) else CostEffEngineForSequenceClassification.from_model(tiny_model, None, backend="torch")
    with pytest.raises(error, match=match):
        engine.generate_logits(batch)


@pytest.mark.parametrize("tau, error", [(-1.0, ValueError), ([0.1, 0.2], ValueError), (float("nan"), ValueError), ("x", TypeError)])
def test_bad_thresholds_raise(tiny_model, tau, error):
    with pytest.raises(error, match="entropy_threshold"):
        CostEffEngineForSequenceClassification.from_model(tiny_model, None, backend="torch").generate_logits(random_batch(0, 2, 97), entropy_threshold=tau)


@pytest.mark.parametrize("batch", [
    {"input_ids": torch.tensor([[101.0, 2204.9, 102.0]])},
    {"input_ids": [[101, 2204.9, 102]]},
    {"input_ids": [[True, False]]},
    {"input_ids": torch.tensor([[True, False]])},
    {"input_ids": [[1, 5, 2]], "token_type_ids": [[0, 0.0, 0]]},
])
def test_float_and_bool_token_ids_are_refused_not_rounded(batch):
    model = costeff_fast.CostEffEngineForSequenceClassification.from_model(make_tiny_model(), None, backend="torch")
    with pytest.raises(TypeError, match="never rounded or cast"):
        model.generate_logits(batch)


def test_a_bool_attention_mask_is_a_mask():
    model = costeff_fast.CostEffEngineForSequenceClassification.from_model(make_tiny_model(), None, backend="torch")
    ids = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    expected = model.generate_logits({"input_ids": ids, "attention_mask": mask})
    torch.testing.assert_close(model.generate_logits({"input_ids": ids, "attention_mask": mask.bool()}), expected)


def test_lone_surrogate_text_is_named(minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = costeff_fast.CostEffEngineForSequenceClassification.from_model(make_tiny_model(vocab_size=30522), tokenizer, backend="torch")
    with pytest.raises(ValueError, match=r"batch item 1 is not valid Unicode \(a lone surrogate '\\udc80' at "
                                         r"character 3\)"):
        model.generate_logits(["fine", "bad\udc80text"])
    with pytest.raises(ValueError, match=r"batch item 0 \(text_pair\) is not valid Unicode"):
        model.generate_logits([("ok", "\ud800")])


@pytest.mark.parametrize("budget", [1, 7, 40, 10_000])
def test_a_call_over_the_token_budget_is_split_with_the_same_results(budget):
    batch = random_batch(3, batch=37, vocab=97, max_len=20)
    whole = CostEffEngineForSequenceClassification.from_model(make_tiny_model(), None, backend="torch", entropy_threshold=0.9)
    split = CostEffEngineForSequenceClassification.from_model(make_tiny_model(), None, backend="torch", entropy_threshold=0.9,
                                  max_batch_tokens=budget)
    logits, layers = whole.generate_logits(batch, return_exit_layers=True)
    split_logits, split_layers = split.generate_logits(batch, return_exit_layers=True)
    assert torch.equal(split_layers, layers)
    torch.testing.assert_close(split_logits, logits, atol=1e-5, rtol=0)


def test_token_chunks_cover_every_row_once_within_the_budget():
    from costeff_fast.inference import _token_chunks

    lengths = torch.tensor([5, 3, 9, 1, 1, 12, 2])
    chunks = _token_chunks(lengths, 10)
    assert [c[:2] for c in chunks] == [(0, 2), (2, 4), (4, 5), (5, 6), (6, 7)]  # the 12-token row alone
    assert all(stop - start == int(lengths[a:b].sum()) for a, b, start, stop in chunks)
    assert chunks[-1][3] == int(lengths.sum()) and _token_chunks(torch.tensor([], dtype=torch.long), 10) == [(0, 0, 0, 0)]
    with pytest.raises(ValueError, match="max_batch_tokens must be a positive int"):
        CostEffEngineForSequenceClassification.from_model(make_tiny_model(), None, backend="torch", max_batch_tokens=0)


def test_every_front_door_returns_the_one_engine_model(minilm_checkpoint, rt_texts):
    loaded = [
        costeff_fast.from_pretrained(minilm_checkpoint, backend="torch"),
        AutoModelForSequenceClassification.from_pretrained(minilm_checkpoint),
        pipeline("text-classification", model=str(minilm_checkpoint)).model,
    ]
    for model in loaded:
        assert type(model) is CostEffEngineForSequenceClassification and isinstance(model, PreTrainedModel)
        assert model.tokenizer is not None
    expected = loaded[0].predict(rt_texts[:16]).tolist()
    assert all(model.predict(rt_texts[:16]).tolist() == expected for model in loaded[1:])


def test_save_pretrained_round_trip_is_bit_identical(minilm_checkpoint, rt_texts, tmp_path):
    reference = CostEffForSequenceClassification.from_pretrained(minilm_checkpoint).eval()
    with torch.no_grad():
        encoded = AutoTokenizer.from_pretrained(minilm_checkpoint)(
            rt_texts, padding=True, truncation=True, return_tensors="pt")
        entropies = costeff_fast.exit_entropy(torch.stack(reference(**encoded).exit_logits, dim=1))
    tau = entropies.median(dim=0).values.tolist()  # rows leave at several exits
    model = costeff_fast.from_pretrained(minilm_checkpoint, entropy_threshold=tau, backend="torch", num_threads=1)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "model.safetensors").is_file()
    again = costeff_fast.from_pretrained(tmp_path, backend="torch", num_threads=1)
    assert again.entropy_threshold == model.entropy_threshold == tau  # the instance's threshold is saved
    state, state_again = model.state_dict(), again.state_dict()
    assert state.keys() == state_again.keys()
    assert all(torch.equal(state[name], state_again[name]) for name in state)
    logits, layers = model.generate_logits(rt_texts, return_exit_layers=True)
    logits_again, layers_again = again.generate_logits(rt_texts, return_exit_layers=True)
    assert torch.equal(logits, logits_again) and torch.equal(layers, layers_again)
    assert len(set(layers.tolist())) >= 2  # the threshold made rows leave at different exits


def test_an_int_thread_count_applies_to_the_models_calls_only(monkeypatch):
    import costeff_fast.inference as inference

    seen = []
    real = inference.run_early_exit

    def recording(*args):
        seen.append(torch.get_num_threads())
        return real(*args)

    monkeypatch.setattr(inference, "run_early_exit", recording)
    before = torch.get_num_threads()
    target = 1 if before > 1 else 2
    model = CostEffEngineForSequenceClassification.from_model(make_tiny_model(), backend="torch", num_threads=target)
    assert torch.get_num_threads() == before  # building the model changes nothing process-wide
    model.generate_logits(random_batch(0, batch=5, vocab=97))
    assert seen == [target] and torch.get_num_threads() == before


def test_a_large_call_is_tokenized_and_run_a_chunk_of_rows_at_a_time(minilm_checkpoint, rt_texts, monkeypatch):
    import costeff_fast.inputs as inputs

    model = costeff_fast.from_pretrained(minilm_checkpoint, entropy_threshold=0.2, backend="torch", num_threads=1)
    whole, whole_layers = model.generate_logits(rt_texts, return_exit_layers=True)
    calls = []
    tokenizer_call = type(model.tokenizer).__call__

    def counting(self, texts, *args, **kwargs):
        calls.append(len(texts))
        return tokenizer_call(self, texts, *args, **kwargs)

    monkeypatch.setattr(inputs, "ROWS_PER_CHUNK", 10)
    monkeypatch.setattr(type(model.tokenizer), "__call__", counting)
    logits, layers = model.generate_logits(rt_texts, return_exit_layers=True)
    assert calls == [10, 10, 10, 10, 8]  # 48 rows, never more than one chunk's token lists at once
    assert torch.equal(layers, whole_layers)
    torch.testing.assert_close(logits, whole, atol=1e-5, rtol=0)
    encoded = model.tokenizer(rt_texts, padding=True, truncation=True, return_tensors="pt")
    tensor_logits = model.generate_logits(dict(encoded))  # a tokenized mapping is sliced the same way
    torch.testing.assert_close(tensor_logits, whole, atol=1e-5, rtol=0)


def test_chunk_edges_keep_tuples_and_extra_mapping_keys_harmless(monkeypatch):
    import costeff_fast.inputs as inputs

    model = CostEffEngineForSequenceClassification.from_model(make_tiny_model(), backend="torch", num_threads=1)
    batch = random_batch(5, batch=5, vocab=97)
    whole = model.generate_logits(batch)
    monkeypatch.setattr(inputs, "ROWS_PER_CHUNK", 2)
    chunked = model.generate_logits({**batch, "length": 5})  # a key encode does not read, as the tokenizer may add
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    lists = [row[: int(n)] for row, n in zip(batch["input_ids"].tolist(), batch["attention_mask"].sum(1))]
    ids_tuple = model.generate_logits({"input_ids": tuple(lists)})  # the last piece holds one row, still a batch
    torch.testing.assert_close(ids_tuple, whole, atol=1e-5, rtol=0)


def test_thread_count_changes_apply_and_training_with_labels_is_refused(monkeypatch):
    import costeff_fast.inference as inference

    seen = []
    real = inference.run_early_exit
    monkeypatch.setattr(inference, "run_early_exit", lambda *args: seen.append(torch.get_num_threads()) or real(*args))
    model = CostEffEngineForSequenceClassification.from_model(make_tiny_model(), backend="torch", num_threads=1)
    batch = random_batch(6, batch=3, vocab=97)
    model.generate_logits(batch)
    model.configure_engine(num_threads=None)  # leave torch's count: the call runs at whatever it is
    with costeff_fast.threads.torch_threads(2):
        model.generate_logits(batch)
    assert seen == [1, 2]
    model.train()
    with pytest.raises(ValueError, match="labels in training mode: the engine computes no gradient"):
        model(**batch, labels=torch.tensor([0, 1, 2]))
    with torch.no_grad():
        assert model(**batch, labels=torch.tensor([0, 1, 2])).loss is not None


def test_a_threshold_the_auto_class_sets_is_checked_at_load(tmp_path):
    make_tiny_model(2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="entropy_threshold"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path, entropy_threshold=-1.0)
    with pytest.raises(ValueError, match="not supported when loading a COST-EFF checkpoint"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
