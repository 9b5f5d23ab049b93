"""The bad-input table of docs/input-validation.md: every row names a test that exists, plus the rows tested here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model, random_batch
from transformers import BertConfig, BertForSequenceClassification

import costeff_fast
from costeff_fast import CostEffEngineForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "input-validation.md"


def table_rows() -> list[tuple[str, str]]:
    """``(id, "tests/file.py::test_name")`` for every row of the tables."""
    rows = []
    for line in TABLE.read_text().splitlines():
        match = re.match(r"\|\s*([A-Z]\d+)\s*\|.*\|\s*(tests/\S+\.py::\w+)\s*\|\s*$", line)
        if match:
            rows.append((match.group(1), match.group(2)))
    return rows


def test_the_table_has_rows_with_unique_ids():
    ids = [row_id for row_id, _ in table_rows()]
    assert len(ids) >= 40 and len(ids) == len(set(ids))
    rows_in_text = [line for line in TABLE.read_text().splitlines() if re.match(r"\|\s*[A-Z]\d+\s*\|", line)]
    assert len(rows_in_text) == len(ids), "a row without a tests/...::test_name reference"


@pytest.mark.parametrize("row_id, reference", table_rows(), ids=[row_id for row_id, _ in table_rows()])
def test_every_row_names_an_existing_test(row_id, reference):
    path, name = reference.split("::")
    tree = ast.parse((ROOT / path).read_text())
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert name in names, f"{row_id}: {reference} does not exist"


def engine(**overrides) -> CostEffEngineForSequenceClassification:
    return CostEffEngineForSequenceClassification.from_model(make_tiny_model(**overrides), None, backend="torch")


def test_texts_need_a_tokenizer():
    with pytest.raises(ValueError, match="this model has no tokenizer; pass a tokenized mapping with input_ids"):
        engine().generate_logits(["some text"])


def test_ids_outside_their_tables():
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=97\)"):
        engine().generate_logits({"input_ids": [[1, -3, 2]]})
    with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, type_vocab_size=2\)"):
        engine().generate_logits({"input_ids": [[1, 3, 2]], "token_type_ids": [[0, 2, 0]]})


def test_mask_of_another_shape():
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"attention_mask must be a tensor of input_ids' shape \(2, 4\)"):
        engine().generate_logits({"input_ids": ids, "attention_mask": torch.ones(2, 3, dtype=torch.long)})


def test_an_empty_batch_gives_empty_outputs():
    logits, layers = engine().generate_logits([], return_exit_layers=True)
    assert logits.shape == (0, 3) and layers.shape == (0,) and logits.dtype == torch.float32
    empty = {"input_ids": torch.zeros(0, 4, dtype=torch.long)}
    assert engine().generate_logits(empty).shape == (0, 3)
    assert engine().predict(random_batch(0, 3, 97)).shape == (3,)


def test_optimize_refuses_float_ids():
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=37)).eval()
    fast = costeff_fast.optimize(bert)
    with pytest.raises(TypeError, match="never rounded or cast"):
        fast(torch.tensor([[1.0, 2.5, 3.0]]))
