"""ONNX export: `costeff-fast export --format onnx` writes every exit's logits and the final logits, equal to the
reference forward within 1e-4 in onnxruntime; the threshold rule applied to them gives the engine's labels.
Skipped where onnx, onnxscript or onnxruntime is not installed (pip install 'costeff_fast[onnx]')."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from conftest import make_tiny_model, random_batch
from transformers import AutoTokenizer

import costeff_fast
from costeff_fast.cli import main
from costeff_fast.data import load_task
from costeff_fast.export import TOLERANCE, output_names


@pytest.fixture(scope="module")
def texts():
    return list(load_task("rt", max_eval_rows=32)["validation"]["text"])


@pytest.fixture(scope="module", params=["cls", "mean"])
def exported(request, tmp_path_factory, minilm_dir, texts):
    """A 4-layer checkpoint of uneven widths with the real tokenizer and a stored threshold, exported through the
    command line; its unpooled exits read [CLS] (the paper) or the token mean (compress's default)."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name)
    root = tmp_path_factory.mktemp("onnx")
    # widths [2, 1, 3, 2] heads, [16, 40, 7, 24] FFN
    model = make_tiny_model(0, num_labels=2, vocab_size=30522, exit_pooling=request.param)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    with torch.no_grad():
        for exit_head in model.exits:
            exit_head.classifier.weight.mul_(3.0)
        out = model(**tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))
    entropy = costeff_fast.exit_entropy(torch.stack(out.exit_logits, dim=1))
    # between two rows' entropies (an even count, midpoint): rows leave at several exits and none is a tie
    model.config.entropy_threshold = torch.quantile(entropy, 0.5, dim=0, interpolation="midpoint").tolist()
    model.save_pretrained(root / "checkpoint")
    tokenizer.save_pretrained(root / "checkpoint")
    output = root / "graph" / "model.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["export", "--model", str(root / "checkpoint"), "--format", "onnx", "--output", str(output)])
    return root / "checkpoint", output, model, printed.getvalue()


def _run(path, batch):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_outputs()]
    return names, session.run(None, {name: batch[name].numpy() for name in ("input_ids", "attention_mask",
                                                                           "token_type_ids")})


def test_command_writes_a_checked_graph(exported):
    _, output, _, printed = exported
    assert output.is_file() and not output.with_name(output.name + ".data").exists()  # one self-contained file
    assert "exit_1_logits ... exit_4_logits and logits" in printed
    assert "onnxruntime matches the reference forward" in printed


@pytest.mark.parametrize("shape", ["texts", "pairs", "one row of one token", "random padded ids"])
def test_every_output_equals_the_reference(exported, texts, shape):
    directory, output, model, _ = exported
    tokenizer = AutoTokenizer.from_pretrained(directory)
    texts = texts[:12]
    if shape == "texts":
        batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    elif shape == "pairs":
        batch = tokenizer(texts[:6], texts[6:], padding=True, truncation=True, max_length=64, return_tensors="pt")
    elif shape == "one row of one token":
        batch = {"input_ids": torch.tensor([[101]]), "attention_mask": torch.ones(1, 1, dtype=torch.long),
                 "token_type_ids": torch.zeros(1, 1, dtype=torch.long)}
    else:
        batch = random_batch(3, batch=9, vocab=30522, max_len=64, pairs=True)
    names, outputs = _run(output, batch)
    assert names == output_names(4) == ["exit_1_logits", "exit_2_logits", "exit_3_logits", "exit_4_logits", "logits"]
    with torch.no_grad():
        reference = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                          entropy_threshold=0.0)
    expected = [*reference.exit_logits, reference.exit_logits[-1]]
    for got, want in zip(outputs, expected):
        assert got.shape == tuple(want.shape) and got.dtype == np.float32
        np.testing.assert_allclose(got, want.numpy(), atol=TOLERANCE, rtol=0)


def test_threshold_rule_on_the_outputs_gives_the_engine_labels(exported, texts):
    """What the README tells ONNX Runtime users: the first exit whose entropy is below the threshold answers."""
    directory, output, _, _ = exported
    engine = costeff_fast.from_pretrained(directory, backend="torch")
    batch = engine.tokenizer(texts, padding=True, truncation=True, max_length=engine.max_length, return_tensors="np")
    _, outputs = _run(output, {k: torch.from_numpy(v) for k, v in batch.items()})
    exits = np.stack(outputs[:-1], axis=1)  # [B, L, C]
    probabilities = np.exp(exits - exits.max(axis=-1, keepdims=True))
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    entropy = -(probabilities * np.log(np.clip(probabilities, 1e-30, None))).sum(axis=-1)  # [B, L] nats
    confident = entropy < np.asarray(engine.entropy_threshold)
    confident[:, -1] = True
    exit_layer = confident.argmax(axis=1) + 1
    labels = exits[np.arange(len(texts)), exit_layer - 1].argmax(axis=-1)
    logits, engine_layers = engine.generate_logits(texts, return_exit_layers=True)
    ties = (np.abs(entropy[:, :-1] - np.asarray(engine.entropy_threshold[:-1])) < 1e-5).any(axis=1)
    assert len(set(exit_layer.tolist())) >= 2 and ties.sum() <= 2
    assert (exit_layer == engine_layers.numpy())[~ties].all()
    assert (labels == logits.argmax(dim=-1).numpy())[~ties].all()


def test_export_refusals_are_one_line(tmp_path, capsys, monkeypatch, minilm_dir):
    with pytest.raises(SystemExit) as stop:
        main(["export", "--model", str(minilm_dir), "--output", str(tmp_path / "m.onnx")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a COST-EFF model" in err
    make_tiny_model().save_pretrained(tmp_path / "tiny")
    capsys.readouterr()  # save_pretrained's progress bar
    monkeypatch.setattr("costeff_fast.export.missing_onnx_packages", lambda: ["onnxscript"])
    with pytest.raises(SystemExit):
        main(["export", "--model", str(tmp_path / "tiny"), "--output", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'costeff_fast[onnx]'" in err
