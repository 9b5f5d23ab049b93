"""Tests of the batch losses every stage shares: distillation (all, last or no exits), slenderization."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from conftest import make_tiny_model, random_batch
from costeff_fast.training.losses import (
    check_distillation_pair,
    classification_loss,
    distillation_loss,
    hidden_mse,
    multi_exit_loss,
    slenderization_loss,
    soft_cross_entropy,
)

LABELS = 3


def labelled_batch(seed: int = 0, vocab: int = 97) -> dict:
    batch = random_batch(seed, 4, vocab)
    batch["labels"] = torch.randint(0, LABELS, (4,), generator=torch.Generator().manual_seed(seed))
    return batch


def inputs_of(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def test_distillation_loss_terms():
    student, teacher = make_tiny_model(0, num_labels=LABELS), make_tiny_model(1, num_labels=LABELS)
    batch = labelled_batch()
    with torch.no_grad():
        s = student(**inputs_of(batch), output_hidden_states=True)
        t = teacher(**inputs_of(batch), output_hidden_states=True)
    mse = hidden_mse(s.hidden_states, t.hidden_states, batch["attention_mask"])
    every = multi_exit_loss(s.exit_logits, batch["labels"], t.exit_logits, kd_weight=0.7, temperature=2.0)
    last = multi_exit_loss(s.exit_logits[-1:], batch["labels"], t.exit_logits[-1:], kd_weight=0.7, temperature=2.0)
    kw = dict(kd_weight=0.7, temperature=2.0)
    torch.testing.assert_close(distillation_loss(student, teacher, batch, hidden_weight=0.5, **kw), every + 0.5 * mse)
    torch.testing.assert_close(distillation_loss(student, teacher, batch, hidden_weight=0, exits="last", **kw), last)
    torch.testing.assert_close(distillation_loss(student, teacher, batch, exits="none", **kw), mse)
    torch.testing.assert_close(slenderization_loss(student, teacher, batch, hidden_weight=0.5, **kw), every + 0.5 * mse)
    torch.testing.assert_close(
        slenderization_loss(student, teacher, batch, hidden_weight=0.5, all_exits=False, **kw), last + 0.5 * mse
    )


def test_an_hf_teacher_teaches_every_exit_its_final_logits():
    bert = BertForSequenceClassification(BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=4,
                                                    num_attention_heads=2, intermediate_size=16,
                                                    max_position_embeddings=64, num_labels=LABELS)).eval()
    student = make_tiny_model(0, num_labels=LABELS)
    check_distillation_pair(student, bert)
    batch = labelled_batch()
    with torch.no_grad():
        target = bert(**inputs_of(batch)).logits
        exits = student(**inputs_of(batch)).exit_logits
    expected = multi_exit_loss(exits, batch["labels"], target, kd_weight=0.5)
    loss = distillation_loss(student, bert, batch, kd_weight=0.5, hidden_weight=0, gradient_equilibrium=True)
    torch.testing.assert_close(loss, expected)


def test_gradient_equilibrium_changes_gradients_not_the_loss():
    student, teacher = make_tiny_model(0, num_labels=LABELS), make_tiny_model(1, num_labels=LABELS)
    batch = labelled_batch()
    grads, losses = [], []
    for equilibrium in (False, True):
        loss = distillation_loss(student, teacher, batch, kd_weight=0.5, gradient_equilibrium=equilibrium)
        losses.append(loss.detach())
        grads.append(torch.autograd.grad(loss, student.layers[0].intermediate.weight)[0])
    torch.testing.assert_close(losses[0], losses[1])
    assert not torch.allclose(grads[0], grads[1])


def test_distillation_loss_errors():
    student, teacher = make_tiny_model(0, num_labels=LABELS), make_tiny_model(1, num_labels=LABELS)
    batch = labelled_batch()
    del batch["labels"]
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(student, teacher, batch, kd_weight=0.5)
    distillation_loss(student, teacher, batch, kd_weight=1.0)  # pure KD needs no labels
    distillation_loss(student, teacher, batch, kd_weight=0.5, exits="none")  # nor do hidden states
    with pytest.raises(ValueError, match="no loss term"):
        distillation_loss(student, teacher, batch, kd_weight=1.0, hidden_weight=0, exits="none")
    with pytest.raises(ValueError, match="exits"):
        distillation_loss(student, teacher, batch, kd_weight=1.0, exits="first")
    with pytest.raises(ValueError, match="input_ids"):
        distillation_loss(student, teacher, {"attention_mask": batch["attention_mask"]}, kd_weight=1.0)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        check_distillation_pair(student, make_tiny_model(1, num_labels=LABELS, num_hidden_layers=3,
                                                         num_attention_heads=2, intermediate_size=8,
                                                         exit_pooler=False))


def test_classification_loss_is_the_cross_entropy_of_the_logits():
    bert = BertForSequenceClassification(BertConfig(vocab_size=97, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=8,
                                                    num_labels=LABELS)).eval()
    batch = labelled_batch()
    logits = bert(**inputs_of(batch)).logits
    torch.testing.assert_close(classification_loss(bert, batch),
                               torch.nn.functional.cross_entropy(logits, batch["labels"]))


def test_early_exit_weight_scales_every_exit_but_the_last():
    student, teacher = make_tiny_model(0, num_labels=LABELS), make_tiny_model(1, num_labels=LABELS)
    batch = labelled_batch(3)
    with torch.no_grad():
        s = student(**inputs_of(batch)).exit_logits
        t = teacher(**inputs_of(batch)).exit_logits
    kw = dict(kd_weight=0.7, temperature=2.0)
    per_exit = [multi_exit_loss((s[i],), batch["labels"], (t[i],), **kw) for i in range(len(s))]
    weighted = multi_exit_loss(s, batch["labels"], t, early_exit_weight=2.5, **kw)
    torch.testing.assert_close(weighted, 2.5 * sum(per_exit[:-1]) + per_exit[-1])
    torch.testing.assert_close(multi_exit_loss(s, batch["labels"], t, early_exit_weight=0.0, **kw), per_exit[-1])
    torch.testing.assert_close(
        distillation_loss(student, teacher, batch, hidden_weight=0, early_exit_weight=2.5, **kw), weighted)
    with pytest.raises(ValueError, match="early_exit_weight must be >= 0"):
        multi_exit_loss(s, batch["labels"], t, early_exit_weight=-1.0, **kw)


def test_soft_cross_entropy_is_scaled_by_temperature_squared():
    generator = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(6, LABELS, generator=generator), torch.randn(6, LABELS, generator=generator)
    for temperature in (1.0, 2.0, 4.0):
        target = torch.softmax(teacher / temperature, dim=-1)
        plain = -(target * torch.log_softmax(student / temperature, dim=-1)).sum(-1).mean()
        torch.testing.assert_close(soft_cross_entropy(student, teacher, temperature), temperature**2 * plain)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_cross_entropy(student, teacher, 0.0)


def test_budget_refuses_bad_ablation_values():
    from costeff_fast.training.budget import budget_with

    with pytest.raises(ValueError, match="kd_temperature must be > 0"):
        budget_with("quick", kd_temperature=0.0)
    with pytest.raises(ValueError, match="early_exit_weight must be >= 0"):
        budget_with("quick", early_exit_weight=-1.0)
    assert budget_with("quick", early_exit_weight=0.0).early_exit_weight == 0.0


# The objective against hand formulas (COST-EFF Sec. 3.3-3.4, Eq. 4-7; Hinton et al. 2015 for T^2). Every
# expected value below is worked out here: closed forms from logits of ln 3 and 0 (softmax in quarters) with the
# arithmetic in the comments, and plain-Python softmax / log-softmax for the rest. None comes from the code under
# test, so swapping kd_weight and 1 - kd_weight, dropping T^2 or flipping a sign in losses.py fails here.

LN2, LN3, SQRT3 = math.log(2.0), math.log(3.0), math.sqrt(3.0)
EXIT_1 = [[LN3, 0.0], [0.0, 0.0]]  # softmax: [3/4, 1/4] and [1/2, 1/2]
EXIT_2 = [[0.0, LN3], [LN3, 0.0]]  # softmax: [1/4, 3/4] and [3/4, 1/4]
TEACHER = [[0.0, 0.0], [LN3, 0.0]]  # softmax: [1/2, 1/2] and [3/4, 1/4]
GOLD = [0, 1]
# Hand values at T = 1 (nats):
#   CE(EXIT_1, GOLD)    = (-ln 3/4 - ln 1/2) / 2                                  = 1.5 ln 2 - 0.5 ln 3
#   KD(EXIT_1, TEACHER) = (-(1/2 ln 3/4 + 1/2 ln 1/4) + ln 2) / 2                  = 1.5 ln 2 - 0.25 ln 3
#   CE(EXIT_2, GOLD)    = (-ln 1/4 - ln 1/4) / 2                                  = 2 ln 2
#   KD(EXIT_2, TEACHER) = (-(1/2 ln 1/4 + 1/2 ln 3/4) - (3/4 ln 3/4 + 1/4 ln 1/4)) / 2 = 2 ln 2 - 0.625 ln 3
CE_1, KD_1 = 1.5 * LN2 - 0.5 * LN3, 1.5 * LN2 - 0.25 * LN3
CE_2, KD_2 = 2 * LN2, 2 * LN2 - 0.625 * LN3


def log_softmax_by_hand(row: list[float]) -> list[float]:
    """``z_i - ln sum_j exp z_j`` in plain Python."""
    norm = math.log(sum(math.exp(z) for z in row))
    return [z - norm for z in row]


def softmax_by_hand(row: list[float]) -> list[float]:
    return [math.exp(v) for v in log_softmax_by_hand(row)]


def kd_by_hand(student: list[list[float]], teacher: list[list[float]], temperature: float = 1.0) -> float:
    """``T^2 * mean_rows -sum_c softmax(t / T)_c * log_softmax(s / T)_c``."""
    rows = []
    for s, t in zip(student, teacher):
        target = softmax_by_hand([v / temperature for v in t])
        log_p = log_softmax_by_hand([v / temperature for v in s])
        rows.append(-sum(q * lp for q, lp in zip(target, log_p)))
    return temperature**2 * sum(rows) / len(rows)


def ce_by_hand(logits: list[list[float]], labels: list[int]) -> float:
    """Mean of ``-log_softmax(z)_y`` (no temperature: the hard-label term is plain cross-entropy)."""
    return sum(-log_softmax_by_hand(row)[y] for row, y in zip(logits, labels)) / len(labels)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor, expected: float) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=1e-6)


def test_hand_formulas_agree_with_the_closed_forms():
    # The helpers themselves, against the pencil values above (so a slip in either shows).
    assert math.isclose(ce_by_hand(EXIT_1, GOLD), CE_1) and math.isclose(kd_by_hand(EXIT_1, TEACHER), KD_1)
    assert math.isclose(ce_by_hand(EXIT_2, GOLD), CE_2) and math.isclose(kd_by_hand(EXIT_2, TEACHER), KD_2)


def test_soft_cross_entropy_by_hand_at_t1_and_t2():
    student, teacher = t(EXIT_1), t(TEACHER)
    close(soft_cross_entropy(student, teacher, 1.0), KD_1)  # 0.7651 nats
    # T = 2, row 1: s/2 = [ln 3 / 2, 0] -> softmax [sqrt3, 1] / (1 + sqrt3), uniform target
    #               -> -(1/2)(ln sqrt3 - ln(1 + sqrt3)) - (1/2)(-ln(1 + sqrt3)) = ln(1 + sqrt3) - ln(3) / 4;
    #        row 2: s = 0 -> uniform student -> ln 2 whatever the target.
    #        times T^2 = 4: 2 (ln(1 + sqrt3) - ln(3) / 4 + ln 2) = 2 ln(2 + 2 sqrt3) - ln(3) / 2 = 2.8471
    at_two = 2 * math.log(2 + 2 * SQRT3) - 0.5 * LN3
    assert math.isclose(kd_by_hand(EXIT_1, TEACHER, 2.0), at_two)
    close(soft_cross_entropy(student, teacher, 2.0), at_two)
    assert at_two / 4 < 0.75  # without the T^2 factor it would read 0.7118: far from 2.8471
    # A student that matches the teacher pays the teacher's entropy: T^2 * H(softmax(t / T)).
    # At T = 1 that is (ln 2 + (ln 4 - 3/4 ln 3)) / 2 = 1.5 ln 2 - 0.375 ln 3.
    close(soft_cross_entropy(teacher, teacher, 1.0), 1.5 * LN2 - 0.375 * LN3)


def test_soft_cross_entropy_gradient_is_t_times_the_softmax_gap():
    # d/ds of T^2 * CE(softmax(t/T), s/T), mean over B rows: T * (softmax(s/T) - softmax(t/T)) / B. The T^2 factor
    # is what makes this scale as T (Hinton et al. 2015, Sec. 2) rather than as 1/T; the teacher gets no gradient.
    student = t(EXIT_2).requires_grad_()
    teacher = t(TEACHER).requires_grad_()
    for temperature in (1.0, 2.0, 4.0):
        (grad,) = torch.autograd.grad(soft_cross_entropy(student, teacher, temperature), student)
        expected = [[temperature * (p - q) / 2 for p, q in zip(softmax_by_hand([v / temperature for v in s]),
                                                                 softmax_by_hand([v / temperature for v in tt]))]
                    for s, tt in zip(EXIT_2, TEACHER)]
        torch.testing.assert_close(grad, t(expected), rtol=1e-5, atol=1e-7)
    # At T = 1, row 1: softmax(s) - softmax(t) = [1/4 - 1/2, 3/4 - 1/2]; over B = 2 rows: [-1/8, 1/8].
    (grad,) = torch.autograd.grad(soft_cross_entropy(student, teacher, 1.0), student)
    torch.testing.assert_close(grad[0], t([-0.125, 0.125]))
    soft_cross_entropy(student, teacher, 2.0).backward()
    assert teacher.grad is None


def test_multi_exit_loss_splits_kd_weight_and_one_minus_kd_weight_by_hand():
    one_exit, teacher, labels = (t(EXIT_2),), t(TEACHER), torch.tensor(GOLD)
    close(multi_exit_loss(one_exit, None, teacher, kd_weight=1.0), KD_2)  # pure KD: 0.6996, no labels needed
    close(multi_exit_loss(one_exit, labels, teacher, kd_weight=0.0), CE_2)  # pure CE: ln 4 = 1.3863
    # 0.75 KD + 0.25 CE = 0.75 (2 ln 2 - 0.625 ln 3) + 0.25 (2 ln 2) = 2 ln 2 - 0.46875 ln 3 = 0.8713;
    # the swapped split, 0.25 KD + 0.75 CE = 2 ln 2 - 0.15625 ln 3 = 1.2146, is far from it.
    mixed = 2 * LN2 - 0.46875 * LN3
    assert math.isclose(0.75 * KD_2 + 0.25 * CE_2, mixed)
    close(multi_exit_loss(one_exit, labels, teacher, kd_weight=0.75), mixed)
    close(multi_exit_loss(one_exit, labels, teacher, kd_weight=0.25), 2 * LN2 - 0.15625 * LN3)
    # The hard-label term uses the labels: other labels, other loss (row 1 now gold 1 at 3/4: -ln 3/4).
    close(multi_exit_loss(one_exit, torch.tensor([1, 1]), teacher, kd_weight=0.0), (2 * LN2 - LN3 + 2 * LN2) / 2)


def test_multi_exit_loss_weights_each_exit_by_hand():
    exits, teacher, labels = (t(EXIT_1), t(EXIT_2)), t(TEACHER), torch.tensor(GOLD)
    # At T = 1 with every weight 1: sum over exits of 0.75 KD_l + 0.25 CE_l.
    term_1, term_2 = 0.75 * KD_1 + 0.25 * CE_1, 0.75 * KD_2 + 0.25 * CE_2
    close(multi_exit_loss(exits, labels, teacher, kd_weight=0.75), term_1 + term_2)
    # early_exit_weight scales exit 1 only, never the last exit.
    close(multi_exit_loss(exits, labels, teacher, kd_weight=0.75, early_exit_weight=2.0), 2.0 * term_1 + term_2)
    close(multi_exit_loss(exits, labels, teacher, kd_weight=0.75, early_exit_weight=0.0), term_2)
    # At T = 2 only the KD part is tempered (and times T^2); the hard-label CE stays at T = 1.
    kd_1, kd_2 = kd_by_hand(EXIT_1, TEACHER, 2.0), kd_by_hand(EXIT_2, TEACHER, 2.0)
    assert math.isclose(kd_1, 2 * math.log(2 + 2 * SQRT3) - 0.5 * LN3)
    expected = 3.0 * (0.8 * kd_1 + 0.2 * CE_1) + (0.8 * kd_2 + 0.2 * CE_2)
    swapped = 3.0 * (0.2 * kd_1 + 0.8 * CE_1) + (0.2 * kd_2 + 0.8 * CE_2)
    tempered_ce = 3.0 * (0.8 * kd_1 + 0.2 * 4 * ce_by_hand([[v / 2 for v in r] for r in EXIT_1], GOLD)) + (
        0.8 * kd_2 + 0.2 * 4 * ce_by_hand([[v / 2 for v in r] for r in EXIT_2], GOLD))
    assert abs(expected - swapped) > 0.5 and abs(expected - tempered_ce) > 0.1  # the test can tell them apart
    loss = multi_exit_loss(exits, labels, teacher, kd_weight=0.8, temperature=2.0, early_exit_weight=3.0)
    close(loss, expected)


def test_multi_exit_loss_distils_exit_to_exit_from_a_tuple_of_teachers_by_hand():
    # A tuple teaches exit l with teacher l (the TA in slenderization); one tensor teaches every exit (the teacher
    # teaching the TA). Teacher 2 here is EXIT_1, so exit 2's KD is kd_by_hand(EXIT_2, EXIT_1).
    exits, labels = (t(EXIT_1), t(EXIT_2)), torch.tensor(GOLD)
    # Pencil check of that term: row 1 target [3/4, 1/4], log p [ln 1/4, ln 3/4] -> 2 ln 2 - 0.25 ln 3;
    # row 2 target [1/2, 1/2], log p [ln 3/4, ln 1/4] -> 2 ln 2 - 0.5 ln 3; mean 2 ln 2 - 0.375 ln 3.
    kd_2_from_exit_1 = 2 * LN2 - 0.375 * LN3
    assert math.isclose(kd_by_hand(EXIT_2, EXIT_1), kd_2_from_exit_1)
    loss = multi_exit_loss(exits, labels, (t(TEACHER), t(EXIT_1)), kd_weight=1.0)
    close(loss, KD_1 + kd_2_from_exit_1)
    close(multi_exit_loss(exits, labels, t(TEACHER), kd_weight=1.0), KD_1 + KD_2)


def test_hidden_mse_by_hand():
    # Two states (L + 1 = 2), B = 2 rows, S = 2 positions, H = 2 features; row 2's second token is padding.
    mask = torch.tensor([[1, 1], [1, 0]])
    student = (torch.zeros(2, 2, 2), torch.ones(2, 2, 2).requires_grad_())
    teacher_0 = t([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [100.0, 100.0]]])  # the padded token is far off
    teacher_1 = torch.ones(2, 2, 2)
    teacher_1[0, 0] = t([3.0, 1.0])
    teacher_1[1, 1] = t([-5.0, -5.0])  # padding again
    teacher = (teacher_0, teacher_1.requires_grad_())
    # State 0: squared errors on the 3 real tokens 1 + 4 + 9 = 14 over 3 tokens x 2 features -> 14/6 = 7/3.
    # State 1: only token (0, 0) differs, by [-2, 0] -> 4/6 = 2/3.  Summed over states: 7/3 + 2/3 = 3.
    loss = hidden_mse(student, teacher, mask)
    close(loss, 3.0)
    loss.backward()
    # d/dh_s of (h_s - h_t)^2 / 6 on real tokens: 2 (h_s - h_t) / 6; token (0, 0) of state 1: [-2/3, 0].
    expected = torch.zeros(2, 2, 2)
    expected[0, 0] = t([-2 / 3, 0.0])
    torch.testing.assert_close(student[1].grad, expected)
    assert teacher[1].grad is None  # the teacher's states are targets, detached


# Gaps found by mutation testing (bench/mutation.py, bench/results/mutation/README.md): each test below fails on a
# mutant of losses.py that every test above let pass. Expected values are again worked out by hand or in plain torch.


def test_hidden_mse_divides_by_real_tokens_times_features_for_any_mask_dtype():
    # One state (L + 1 = 1 is a valid tuple), B = 1, S = 3 positions != H = 2 features, the last token padding.
    # Squared errors on the 2 real tokens: [1, 1] and [4, 0] -> 6, over 2 tokens x 2 features = 1.5 (dividing by
    # the sequence length instead of the feature count would give 6 / (2 x 3) = 1.0).
    student = (torch.zeros(1, 3, 2),)
    teacher = (t([[[1.0, -1.0], [2.0, 0.0], [9.0, 9.0]]]),)
    for mask in (torch.tensor([[1, 1, 0]]), torch.tensor([[True, True, False]]),
                 torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)):
        loss = hidden_mse(student, teacher, mask)
        assert loss.dtype == torch.float32, mask.dtype  # "Scalar fp32" whatever the mask's dtype
        close(loss, 1.5)
    with pytest.raises(ValueError, match="2 student states vs 1 teacher states"):
        hidden_mse(student * 2, teacher, torch.tensor([[1, 1, 0]]))


def test_multi_exit_loss_is_fp32_for_float64_logits():
    # "any float dtype; the loss is fp32": float64 exits and teacher give the fp32 hand value of
    # test_multi_exit_loss_weights_each_exit_by_hand.
    exits = (t(EXIT_1).double(), t(EXIT_2).double())
    loss = multi_exit_loss(exits, torch.tensor(GOLD), t(TEACHER).double(), kd_weight=0.75)
    assert loss.dtype == torch.float32
    close(loss, 0.75 * KD_1 + 0.25 * CE_1 + 0.75 * KD_2 + 0.25 * CE_2)


def test_multi_exit_loss_needs_no_teacher_at_kd_weight_0_and_refuses_kd_weights_outside_0_1():
    exits, labels = (t(EXIT_1), t(EXIT_2)), torch.tensor(GOLD)
    close(multi_exit_loss(exits, labels, None, kd_weight=0.0), CE_1 + CE_2)  # pure CE: no teacher consulted
    for kd_weight in (1.5, -0.25):
        with pytest.raises(ValueError, match=rf"kd_weight must be in \[0, 1\], got {kd_weight}"):
            multi_exit_loss(exits, labels, t(TEACHER), kd_weight=kd_weight)


def test_soft_cross_entropy_defaults_to_t1():
    close(soft_cross_entropy(t(EXIT_1), t(TEACHER)), KD_1)


def test_gradient_equilibrium_is_off_by_default():
    student, teacher = make_tiny_model(0, num_labels=LABELS), make_tiny_model(1, num_labels=LABELS)
    batch = labelled_batch()
    weight = student.layers[0].intermediate.weight
    grads = {}
    for name, extra in (("default", {}), ("off", {"gradient_equilibrium": False}),
                        ("on", {"gradient_equilibrium": True})):
        grads[name] = torch.autograd.grad(distillation_loss(student, teacher, batch, kd_weight=0.5, **extra), weight)[0]
    torch.testing.assert_close(grads["default"], grads["off"])
    assert not torch.allclose(grads["default"], grads["on"])


def test_slenderization_defaults_are_the_papers_by_hand():
    # kd_weight 0.9, T = 1, hidden weight 1, every exit (COST-EFF Sec. 3.3), in plain torch from the two models'
    # outputs: sum_l [0.9 KD(exit_l, TA exit_l) + 0.1 CE(exit_l, y)] + sum_states masked MSE.
    student, ta = make_tiny_model(0, num_labels=LABELS), make_tiny_model(1, num_labels=LABELS)
    batch = labelled_batch(2)
    with torch.no_grad():
        s = student(**inputs_of(batch), output_hidden_states=True)
        a = ta(**inputs_of(batch), output_hidden_states=True)
        expected = 0.0
        for s_logits, a_logits in zip(s.exit_logits, a.exit_logits):
            kd = -(torch.softmax(a_logits, -1) * torch.log_softmax(s_logits, -1)).sum(-1).mean()
            ce = -torch.log_softmax(s_logits, -1)[torch.arange(4), batch["labels"]].mean()
            expected += 0.9 * kd + 0.1 * ce
        mask = batch["attention_mask"].float()[..., None]
        for s_hidden, a_hidden in zip(s.hidden_states, a.hidden_states):
            expected += ((s_hidden - a_hidden) ** 2 * mask).sum() / (mask.sum() * s_hidden.shape[-1])
    torch.testing.assert_close(slenderization_loss(student, ta, batch).detach(), expected)


class OnDevice(torch.nn.Module):
    """A stand-in multi-exit classifier whose parameter lives on ``device`` (here "meta": a device other than the
    CPU's batches, on a CPU-only machine) and which records the devices of the inputs it is called with."""

    def __init__(self, device, layers: int = 2, hidden: int = 4):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones((), device=device))
        self.layers, self.hidden, self.seen = layers, hidden, set()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False):
        self.seen |= {x.device.type for x in (input_ids, attention_mask, token_type_ids) if x is not None}
        rows, positions = input_ids.shape
        logits = self.scale * torch.ones(rows, LABELS, device=self.scale.device)
        states = tuple(self.scale * torch.ones(rows, positions, self.hidden, device=self.scale.device)
                       for _ in range(self.layers + 1))
        return type("Output", (), {"logits": logits, "exit_logits": (logits,) * self.layers,
                                   "hidden_states": states if output_hidden_states else None})


def test_the_losses_move_the_batch_and_labels_to_the_models_device():
    # The CPU batch must reach a model elsewhere on the model's device, labels included (the "meta" device stands
    # for a GPU: tensors there have shapes and no data, and mixing them with CPU tensors raises).
    batch = labelled_batch()
    model = OnDevice("meta")
    assert classification_loss(model, batch).device.type == "meta"
    assert model.seen == {"meta"}
    student, teacher = OnDevice("meta"), OnDevice("meta")
    assert distillation_loss(student, teacher, batch, kd_weight=0.5).device.type == "meta"
    assert student.seen == teacher.seen == {"meta"}
