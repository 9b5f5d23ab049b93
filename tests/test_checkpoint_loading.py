"""Strict loading: every corrupted or inconsistent checkpoint artifact is refused, naming the file and the field."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_tiny_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import costeff_fast
from costeff_fast.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def saved(tmp_path_factory, minilm_dir):
    """A tiny checkpoint with the packaged tokenizer (vocab 30522, so the model's vocab matches it)."""
    directory = tmp_path_factory.mktemp("checkpoint") / "model"
    make_tiny_model(vocab_size=30522).save_pretrained(directory)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(directory)
    return directory


@pytest.fixture
def copy(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "model")


@pytest.fixture(params=["costeff_fast", "auto_model"])
def load(request):
    """Both ways in: costeff_fast.from_pretrained and the Hugging Face Auto class (which alone would re-initialise a
    missing tensor, unpickle a .bin and load a NaN)."""
    return {"costeff_fast": costeff_fast.from_pretrained,
            "auto_model": AutoModelForSequenceClassification.from_pretrained}[request.param]


def edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def edit_weights(directory, edit):
    path = directory / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def test_the_intact_checkpoint_loads_and_answers(saved):
    model = costeff_fast.from_pretrained(saved, backend="torch")
    assert model.generate_logits(["a short text"]).shape == (1, 3)


def test_a_missing_tensor_is_named(copy, load):
    edit_weights(copy, lambda state: state.pop("layers.2.query.weight"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing 1 tensor\(s\): layers\.2\.query\.weight"):
        load(copy)


def test_unexpected_and_mis_shaped_tensors_are_named(copy, load):
    def edit(state):
        state["layers.9.extra"] = torch.zeros(2)
        state["layers.1.key.bias"] = torch.zeros(3)

    edit_weights(copy, edit)
    with pytest.raises(CheckpointError) as info:
        load(copy)
    message = str(info.value)
    assert "unexpected 1 tensor(s): layers.9.extra" in message
    assert "layers.1.key.bias (3,) (config: (8,))" in message and "config.json" in message


def test_non_finite_weights_are_refused(copy, load):
    def edit(state):
        state["exits.0.classifier.weight"][0, 0] = float("nan")

    edit_weights(copy, edit)
    with pytest.raises(CheckpointError, match=r"NaN or inf in 1 tensor\(s\): exits\.0\.classifier\.weight"):
        load(copy)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_truncated_or_corrupt_weights(copy, damage, load):
    path = copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00\xff" * 100, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file .*truncated or "
                                              r"corrupt"):
        load(copy)


def test_pickle_weights_are_never_loaded(copy, load):
    torch.save(load_file(str(copy / "model.safetensors")), copy / "pytorch_model.bin")
    (copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors not found; pytorch_model\.bin is a pickle file, "
                                                r"which is never loaded"):
        load(copy)


@pytest.mark.parametrize("changes,match", [
    ({"num_hidden_layers": 0}, r"num_hidden_layers must be an integer >= 1, got 0"),
    ({"hidden_size": -32}, r"hidden_size must be an integer >= 1, got -32"),
    ({"intermediate_size": [16, 40, 7]}, r"intermediate_size"),
    ({"num_attention_heads": [2, 1, 0, 2]}, r"num_attention_heads"),
    ({"entropy_threshold": [0.1, 0.2]}, r"entropy_threshold"),
    ({"layer_norm_eps": 0}, r"layer_norm_eps must be a positive finite number"),
    ({"model_type": "bert"}, r"model_type 'bert' is not a COST-EFF model"),
])
def test_bad_config_fields_are_named(copy, changes, match):
    edit_config(copy, **changes)
    with pytest.raises(CheckpointError, match=match) as info:
        costeff_fast.from_pretrained(copy)
    assert str(info.value).startswith(f"{copy / 'config.json'}:")


def test_config_that_is_not_json(copy):
    (copy / "config.json").write_text('{"model_type": "costeff", ')
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        costeff_fast.from_pretrained(copy)


def test_a_weight_file_that_disagrees_with_the_config(copy):
    edit_config(copy, intermediate_size=[16, 40, 8, 24])
    with pytest.raises(CheckpointError, match=r"of another shape than config\.json implies: .*layers\.2"):
        costeff_fast.from_pretrained(copy)


def test_corrupt_tokenizer_file_is_named(copy):
    (copy / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(CheckpointError, match=r"tokenizer files .*tokenizer\.json.* cannot be loaded"):
        costeff_fast.from_pretrained(copy)


def test_tokenizer_larger_than_the_embedding(copy):
    edit_config(copy, vocab_size=1000)

    def shrink(state):
        state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"][:1000].clone()

    edit_weights(copy, shrink)
    with pytest.raises(CheckpointError, match=r"the tokenizer has 30522 tokens but config\.json's vocab_size is 1000"):
        costeff_fast.from_pretrained(copy)
