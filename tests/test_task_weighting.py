"""Task weights that follow the tasks' losses (loss-balanced task weighting)."""

from __future__ import annotations

import pytest

from mammut.task_weighting import TaskWeighting


def test_fixed_weighting_keeps_the_configured_weights():
    weighting = TaskWeighting({"pretrain": 1.0, "vqa": 2.0})
    weighting.update({"pretrain": 10.0, "vqa": 1.0})
    weighting.update({"pretrain": 1.0, "vqa": 0.5})
    assert weighting.weights() == {"pretrain": 1.0, "vqa": 2.0}


def test_the_task_that_has_learned_least_weighs_most_and_the_sum_is_kept():
    weighting = TaskWeighting({"pretrain": 1.0, "vqa": 1.0}, "loss_balanced", alpha=1.0)
    weighting.update({"pretrain": 30.0})
    assert weighting.weights() == {"pretrain": 1.0, "vqa": 1.0}  # vqa has no loss yet: nothing to balance
    weighting.update({"vqa": 8.0})
    for _ in range(1000):  # pretraining's loss falls to a tenth, VQA's to a twentieth
        weighting.update({"pretrain": 3.0, "vqa": 0.4})
    weights = weighting.weights()
    assert weights["pretrain"] + weights["vqa"] == pytest.approx(2.0)
    # (3 / 30) / (0.4 / 8) = 2: pretraining keeps twice the weight of VQA.
    assert weights["pretrain"] / weights["vqa"] == pytest.approx(2.0, rel=0.01)


def test_alpha_sets_how_far_the_weights_move_and_base_weights_scale_them():
    def weights(alpha, base):
        weighting = TaskWeighting(base, "loss_balanced", alpha=alpha)
        weighting.update({"a": 1.0, "b": 1.0})
        for _ in range(1000):
            weighting.update({"a": 0.5, "b": 0.125})
        return weighting.weights()

    assert weights(0.0, {"a": 1.0, "b": 3.0}) == pytest.approx({"a": 1.0, "b": 3.0})
    half = weights(0.5, {"a": 1.0, "b": 1.0})
    assert half["a"] / half["b"] == pytest.approx(2.0, rel=0.01)  # (0.5 / 0.125) ** 0.5
    based = weights(0.5, {"a": 1.0, "b": 2.0})
    assert based["a"] / based["b"] == pytest.approx(1.0, rel=0.01) and sum(based.values()) == pytest.approx(3.0)


def test_the_state_resumes_and_bad_settings_are_refused():
    weighting = TaskWeighting({"a": 1.0, "b": 1.0}, "loss_balanced")
    for losses in ({"a": 4.0, "b": 2.0}, {"a": 1.0, "b": 0.0}, {"a": 2.0, "b": 1.0}):
        weighting.update(losses)  # b's 0 (a step of all-bad samples) is not a loss to balance by
    resumed = TaskWeighting({"a": 1.0, "b": 1.0}, "loss_balanced")
    resumed.load_state_dict(weighting.state_dict())
    assert resumed.weights() == weighting.weights() and weighting.first == {"a": 4.0, "b": 2.0}
    with pytest.raises(ValueError, match="task_weighting"):
        TaskWeighting({"a": 1.0}, "gradnorm")
    with pytest.raises(ValueError, match="exponent"):
        TaskWeighting({"a": 1.0}, "loss_balanced", alpha=-1)
