"""The official VQAv2 accuracy on hand-made cases, and its breakdown by question type."""

import pytest
import torch

from mammut.metrics.vqa import (
    VQAAccuracy,
    accuracy_breakdown,
    majority_answers,
    normalize_answer,
    vqa_accuracy,
)

from distributed import on_two_ranks


@pytest.mark.parametrize("raw, normal", [
    ("Two", "2"),
    ("two.", "2"),
    ("a circle", "circle"),
    ("The Red Circle!", "red circle"),
    ("  Yes ", "yes"),
    ("dont know", "don't know"),
    ("t-shirt", "t shirt"),
    ("3.5", "3.5"),
    ("1,000", "1000"),
    ("none", "0"),
])
def test_normalisation(raw, normal):
    assert normalize_answer(raw) == normal


def test_number_words_match_digits():
    assert vqa_accuracy("2", ["two"] * 10) == 1.0
    assert vqa_accuracy("two", ["2"] * 10) == 1.0


def test_articles_case_and_punctuation_do_not_matter():
    assert vqa_accuracy("circle", ["a circle"] * 10) == 1.0
    assert vqa_accuracy("A Circle.", ["circle"] * 10) == 1.0
    assert vqa_accuracy("red?", ["Red"] * 4 + ["blue"] * 6) == 1.0


def test_fewer_than_three_matching_annotators_give_partial_credit():
    # Leave-one-out over the 10 annotators: with m matches, m subsets hold m-1 of them.
    assert vqa_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(0.3)  # 9 x 1/3 + 1 x 0, over 10
    assert vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx(0.6)  # 8 x 2/3 + 2 x 1/3
    assert vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx(0.9)  # 7 x 1 + 3 x 2/3
    assert vqa_accuracy("red", ["red"] * 4 + ["blue"] * 6) == 1.0
    assert vqa_accuracy("green", ["red"] * 4 + ["blue"] * 6) == 0.0


def test_majority_answers_per_group_after_normalisation():
    groups = [("count", ["2", "two", "3"]), ("count", ["Two.", "3"]), ("colour", ["red", "red", "blue"])]
    assert majority_answers(groups) == {"count": "2", "colour": "red"}


def test_metric_keeps_one_score_per_question_and_breaks_it_down():
    metric = VQAAccuracy()
    metric.update(["2", "red", "yes"], [["two"] * 10, ["blue"] * 10, ["yes"] * 3 + ["no"] * 7],
                  torch.tensor([1, 2, 3]))
    metric.update(["2"], [["two"] * 10], torch.tensor([1]))  # a repeat, as DistributedSampler pads
    scores = metric.compute()
    assert scores == pytest.approx({1: 1.0, 2: 0.0, 3: 0.9})
    table = accuracy_breakdown(scores, {"question_type": {1: "count", 2: "colour", 3: "existence"},
                                        "answer_type": {1: "number", 2: "other", 3: "yes/no"}})
    assert table["accuracy"] == pytest.approx(1.9 / 3)
    assert table["question_type/count"] == 1.0 and table["question_type/colour"] == 0.0
    assert table["answer_type/yes/no"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="2 predictions"):
        metric.update(["a", "b"], [["a"]], torch.tensor([4]))


def _scores_on_one_rank(rank: int) -> dict[int, float]:
    metric = VQAAccuracy()
    if rank == 0:
        metric.update(["2", "red"], [["two"] * 10, ["blue"] * 10], torch.tensor([1, 2]))
    else:  # question 1 again: DistributedSampler pads the last rank with repeats
        metric.update(["yes", "2"], [["yes"] * 3 + ["no"] * 7, ["two"] * 10], torch.tensor([3, 1]))
    return metric.compute()


@pytest.mark.slow
def test_ddp_gathers_every_rank(tmp_path):
    for scores in on_two_ranks(_scores_on_one_rank, tmp_path):
        assert scores == pytest.approx({1: 1.0, 2: 0.0, 3: 0.9})
