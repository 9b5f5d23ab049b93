"""`costeff-fast info DIR`: widths per layer, parameters, FLOPs per token-layer, the stored threshold and the labels;
`--help` of every command as plain text; quiet logging by default, detail with -v."""

from __future__ import annotations

import argparse
import json
import logging

import pytest
from conftest import make_tiny_model
from transformers import AutoTokenizer

from costeff_fast.cli import build_parser, main
from costeff_fast.commands import COMMANDS
from costeff_fast.flops import exit_flops, layer_flops, model_flops, parameter_counts


@pytest.fixture
def checkpoint(tmp_path):
    model = make_tiny_model(1, num_labels=3, entropy_threshold=[0.5, 0.25, 0.125, 0.0],
                            id2label={0: "negative", 1: "neutral", 2: "positive"},
                            label2id={"negative": 0, "neutral": 1, "positive": 2})
    model.save_pretrained(tmp_path)
    return tmp_path, model


def test_info_json_equals_the_flop_and_parameter_accounting(checkpoint, capsys):
    directory, model = checkpoint
    capsys.readouterr()
    main(["info", str(directory), "--json", "--seq-len", "20"])
    info = json.loads(capsys.readouterr().out)
    config = model.config
    assert [layer["heads"] for layer in info["layers"]] == [2, 1, 3, 2]
    assert [layer["attention_width"] for layer in info["layers"]] == [16, 8, 24, 16]
    assert [layer["ffn"] for layer in info["layers"]] == [16, 40, 7, 24]
    assert [layer["parameters"] for layer in info["layers"]] == [
        sum(p.numel() for p in layer.parameters()) for layer in model.layers]
    assert [layer["flops_per_token"] for layer in info["layers"]] == [layer_flops(config, i, 20) / 20 for i in range(4)]
    assert [layer["exit_flops"] for layer in info["layers"]] == [exit_flops(config, i) for i in range(4)]
    assert [layer["exit"] for layer in info["layers"]] == ["cls -> tanh", "cls -> pooler + tanh", "cls -> tanh",
                                                           "cls -> tanh"]
    counts = parameter_counts(model)
    assert info["parameters"]["total"] == counts["total"] and info["parameters"]["encoder"] == counts["encoder"]
    assert sum(info["parameters"][k] for k in ("encoder", "embeddings", "exits")) == counts["total"]
    assert info["flops_per_row"] == model_flops(config, [20])
    assert info["entropy_threshold"] == [0.5, 0.25, 0.125, 0.0]
    assert info["labels"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert info["max_length"] == 64 and info["tokenizer"] is False and info["embedding_rank"] == 12


def test_info_text_report(checkpoint, capsys, tmp_path_factory, minilm_dir):
    directory, _ = checkpoint
    capsys.readouterr()
    main(["info", str(directory)])
    text = capsys.readouterr().out
    assert "4 layers, hidden 32, head size 8, vocabulary 97 (word embedding factorized to rank 12)" in text
    assert "labels: 0 negative, 1 neutral, 2 positive" in text
    assert "entropy threshold: per exit 0.5000, 0.2500, 0.1250, 0.0000 nats" in text
    assert "one row of 64 tokens" in text  # 128 by default, capped by the model's max length
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert [row[:4] for row in rows] == [["1", "2", "16", "16"], ["2", "1", "8", "40"], ["3", "3", "24", "7"],
                                         ["4", "2", "16", "24"]]
    other = tmp_path_factory.mktemp("with_tokenizer")
    make_tiny_model(2, num_labels=2, vocab_size=30522).save_pretrained(other)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(other)
    main(["info", str(other)])
    text = capsys.readouterr().out
    assert "none stored: every row runs to layer 4" in text
    assert "max length: 64 tokens (the least of max_position_embeddings 64 and tokenizer 512)" in text


def test_info_refuses_in_one_line(tmp_path, capsys, minilm_dir):
    for directory, message in ((tmp_path / "missing", "config.json not found"),
                               (minilm_dir, "not a COST-EFF model")):
        with pytest.raises(SystemExit) as stop:
            main(["info", str(directory)])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("costeff-fast: error:") and message in err


def test_quiet_by_default_detail_with_verbose(checkpoint, capsys, caplog):
    directory, _ = checkpoint
    with caplog.at_level(logging.DEBUG):  # the root accepts everything: the costeff_fast logger decides
        main(["info", str(directory)])
        assert not [r for r in caplog.records if r.name.startswith("costeff_fast")]
        main(["info", str(directory), "-v"])
        assert any("config.json" in r.getMessage() for r in caplog.records if r.name.startswith("costeff_fast"))


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", [command.NAME for command in COMMANDS])
def test_every_help_is_plain_text(name, capsys):
    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for markup in ("``", ":func:", ":class:", ":mod:", ":meth:", ":data:"):
        assert markup not in text, f"{name} --help shows reST markup {markup!r}"
    assert text.startswith(f"usage: costeff-fast {name}")


@pytest.mark.parametrize("name", ["export", "info"])
def test_every_argument_of_the_new_commands_is_explained(name):
    parser = _subparsers()[name]
    for action in parser._actions:
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    assert parser.description and parser.epilog
