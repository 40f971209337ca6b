"""Validation metrics against hand-computed values: sums over batches are exact (not means of
batch means), sequence accuracy is whole-sequence exact match with padding ignored, the CTC label
error rate decodes best paths and counts edit distance, bit errors are counted on masked steps."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnspec.runtime.tasks.ntm import bit_errors_per_sequence
from nnspec.runtime.train.metrics import METRICS, Accumulator, ctc_greedy, edit_distance


def one_hot_logits(ids: list, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(ids), classes).float() * 5.0


def test_perplexity_is_exp_of_the_token_mean_over_all_batches():
    acc = Accumulator(["perplexity"])
    a = {"logits": torch.zeros(1, 1, 4), "targets": torch.zeros(1, 1, dtype=torch.long)}  # ce = ln 4
    b = {"logits": torch.zeros(1, 3, 2), "targets": torch.zeros(1, 3, dtype=torch.long)}  # ce = ln 2 x 3
    acc.add(1.0, a)
    acc.add(1.0, b)
    assert acc.result()["perplexity"] == pytest.approx(math.exp((math.log(4) + 3 * math.log(2)) / 4))


def test_sequence_accuracy_is_whole_sequence_exact_match():
    targets = torch.tensor([[0, 1, 2], [2, 1, 0], [1, 1, -100]])
    pred = [[0, 1, 2], [2, 0, 0], [1, 1, 0]]  # right, one position wrong, right (padding ignored)
    inputs = {"pointer_logits": one_hot_logits(pred, 3), "targets": targets}
    acc = Accumulator(["sequence_accuracy"])
    acc.add(0.0, inputs)
    assert acc.result()["sequence_accuracy"] == pytest.approx(2 / 3)
    # plain `logits` work too; without either the metric does not apply
    assert METRICS["sequence_accuracy"].applies({"logits": inputs["pointer_logits"], "targets": targets})
    assert not METRICS["sequence_accuracy"].applies({"targets": targets})


def test_edit_distance():
    assert edit_distance([], []) == 0
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([1, 2], [2, 1]) == 2
    assert edit_distance([], [4, 4]) == 2
    assert edit_distance([5, 1, 2], [1, 2, 6]) == 2


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    frames = [0, 3, 3, 0, 3, 1, 1, 2, 0]  # -> 3 3 1 2 ; the frames past the length are not read
    logits = one_hot_logits([frames], 4)
    assert ctc_greedy(logits, torch.tensor([9])) == [[3, 3, 1, 2]]
    assert ctc_greedy(logits, torch.tensor([4])) == [[3]]


def test_label_error_rate_sums_edits_over_target_lengths():
    logits = one_hot_logits([[1, 1, 0, 2, 0], [3, 0, 0, 0, 0]], 4)
    inputs = {"logits": logits, "input_lengths": torch.tensor([5, 5]),
              "targets": torch.tensor([[1, 2, 0], [3, 1, 2]]), "target_lengths": torch.tensor([2, 3])}
    acc = Accumulator(["label_error_rate"])
    acc.add(0.0, inputs)
    assert acc.result()["label_error_rate"] == pytest.approx((0 + 2) / 5)


def test_bit_errors_per_sequence_equals_the_tasks_own_count():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 6, 3)).astype(np.float32)
    y = (rng.random((4, 6, 3)) > 0.5).astype(np.float32)
    mask = (rng.random((4, 6)) > 0.4).astype(np.float32)
    acc = Accumulator(["bit_errors_per_sequence"])
    acc.add(0.0, {"logits": torch.from_numpy(logits), "targets": torch.from_numpy(y), "mask": torch.from_numpy(mask)})
    probs = 1 / (1 + np.exp(-logits))
    assert acc.result()["bit_errors_per_sequence"] == pytest.approx(bit_errors_per_sequence(probs, y, mask))


def test_induction_accuracy_scores_head_zero_on_the_masked_positions():
    targets = torch.tensor([[1, 2, 3, 1]])
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    head0 = one_hot_logits([[0, 0, 3, 2]], 4)  # wrong where unmasked (ignored), then right, wrong
    head1 = one_hot_logits([[1, 2, 3, 1]], 4)  # the second head is not scored
    acc = Accumulator(["induction_accuracy"])
    acc.add(0.0, {"head_logits": torch.stack([head0, head1]), "targets": targets, "induction_mask": mask})
    acc.add(0.0, {"logits": head1, "targets": targets, "induction_mask": mask})  # a one-head model: 2 of 2
    assert acc.result()["induction_accuracy"] == pytest.approx(3 / 4)


def test_preference_accuracy_counts_pairs_whose_policy_gains_on_the_chosen():
    targets = torch.tensor([[0], [0], [0], [0]])  # rows 0, 1 chosen; 2, 3 their rejected
    mask = torch.ones(4, 1)
    ref = torch.zeros(4, 1, 2)
    policy = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]).unsqueeze(1)
    # pair 0: the chosen gains log-prob over the reference, the rejected does not -> right;
    # pair 1: a tie -> not counted right
    acc = Accumulator(["preference_accuracy"])
    acc.add(0.0, {"logits": policy, "reference_logits": ref, "targets": targets, "response_mask": mask})
    assert acc.result()["preference_accuracy"] == pytest.approx(0.5)
