"""The official VQAv2 accuracy: hand-made cases, agreement with the official script, breakdown by type."""

import random

import pytest
import torch

from mammut.answers import strip_punctuation
from mammut.metrics.vqa import (
    VQAAccuracy,
    accuracy_breakdown,
    majority_answers,
    normalize_answer,
    vqa_accuracy,
)

from distributed import on_two_ranks
from official_vqa_eval import evaluate


@pytest.mark.parametrize("raw, normal", [
    ("Two", "2"),
    ("two.", "2"),
    ("a circle", "circle"),
    ("The Red Circle!", "red circle"),
    ("  Yes ", "yes"),
    ("dont know", "don't know"),
    ("t-shirt", "t shirt"),
    ("3.5", "3.5"),
    ("3.", "3"),  # the official period pattern drops a period after a digit too
    ("1,000", "1000"),
    ("none", "0"),
    ("well", "well"),  # not a contraction in the official table
    ("twas", "'twas"),
    ("." * 40 + "yes", "." * 8 + "yes"),  # only the first 32 periods go
])
def test_normalisation(raw, normal):
    assert normalize_answer(raw) == normal


def test_a_period_after_a_digit_is_dropped():
    assert vqa_accuracy("3.", ["3"] * 10) == 1.0
    assert vqa_accuracy("3.", ["3"] * 4 + ["4"] * 6) == 1.0
    assert vqa_accuracy("3.5", ["3"] * 10) == 0.0


def test_ground_truth_is_left_alone_when_the_annotators_agree():
    # All ten alike: compared as given, so only an already normal answer can match.
    assert vqa_accuracy("2", ["two"] * 10) == 0.0
    assert vqa_accuracy("two", ["2"] * 10) == 1.0
    assert vqa_accuracy("circle", ["a circle"] * 10) == 0.0
    assert vqa_accuracy("yes", ["yes."] * 10) == 0.0
    # Once they differ, the ground truth gets the punctuation step, and only that.
    assert vqa_accuracy("yes", ["yes."] * 9 + ["yes"]) == 1.0
    assert vqa_accuracy("red", ["Red"] * 4 + ["blue"] * 6) == 0.0
    assert vqa_accuracy("2", ["two"] * 4 + ["3"] * 6) == 0.0


def test_each_mark_is_judged_on_the_answer_as_given():
    # "-" touches no space in "a-(b", so it becomes one, though "(" has become a space before it.
    assert strip_punctuation("a-(b") == "a  b"
    assert vqa_accuracy("a-(b", ["a-(b"] * 5 + ["c"] * 5) == 0.0  # ground truth "a  b", prediction "a b"


def test_case_articles_and_punctuation_of_the_prediction_do_not_matter():
    assert vqa_accuracy("A Circle.", ["circle"] * 10) == 1.0
    assert vqa_accuracy("The Red?", ["red"] * 4 + ["blue"] * 6) == 1.0


def _tricky_cases(count: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """(prediction, answers) built from pieces the official normalisation treats oddly."""
    pieces = ["3.", "3.5", ".", "a", "the", "an", "1,000", "t-shirt", "t - shirt", "dont", "don't", "two", "ten.",
              "none", "0", "2", "yes", "no", "Yes!", "yes.", "  YES ", "no\n", "\tno", "yes?!", "a dog", "dog",
              "." * 40 + "yes", "yes" + "." * 33, "3" + "." * 35,  # more periods than the official count of 32
              "don\u2019t", "it\u2019s", "twas", "'twas", "Im", "im", "well", "somebody'd", "let's", "ow's'at",
              "a-(b", "a- b", "x ;-y", "b (-c", "(red)", "red ,blue", "1,2-3", "{left}", "@home", "10:30", "a/b",
              "\u00a0yes", "\u0663.", "\u0130stanbul"]
    joiners = ["", " ", "  ", "\t", "\n", "-", ".", ","]
    rng = random.Random(seed)

    def piece() -> str:
        text = rng.choice(joiners).join(rng.choices(pieces, k=rng.choice([1, 1, 2, 3])))
        return rng.choice([text, text.upper(), text.title(), text])

    cases = []
    for _ in range(count):
        pool = [piece() for _ in range(rng.choice([1, 2, 3]))]
        pool.append(normalize_answer(pool[0]))  # matches a normalised prediction, as VQAv2's answers do
        size = rng.choice([10, 10, 10, 3, 1])
        if rng.random() < 0.3:
            answers = [rng.choice(pool)] * size  # unanimous: the official script leaves them as they are
        else:
            answers = rng.choices(pool, k=size)
        prediction = rng.choice(pool + [piece()])
        cases.append((prediction, answers))
    return cases


def test_scores_equal_the_official_script_on_tricky_answers():
    cases = _tricky_cases(600)
    gts = {qid: {"answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                             for i, a in enumerate(answers)]}
           for qid, (_, answers) in enumerate(cases)}
    res = {qid: {"answer": prediction} for qid, (prediction, _) in enumerate(cases)}
    official = evaluate(gts, res)
    ours = {qid: vqa_accuracy(prediction, answers) for qid, (prediction, answers) in enumerate(cases)}
    mismatches = {qid: (cases[qid], ours[qid], official[qid]) for qid in official
                  if abs(ours[qid] - official[qid]) > 1e-12}
    assert not mismatches
    # The cases reach every kind of score, so agreeing is not trivial.
    assert {round(score, 6) for score in official.values()} >= {0.0, 0.3, 0.6, 0.9, 1.0}


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
    metric.update(["two", "red", "yes"], [["2"] * 10, ["blue"] * 10, ["yes"] * 3 + ["no"] * 7],
                  torch.tensor([1, 2, 3]))
    metric.update(["two"], [["2"] * 10], torch.tensor([1]))  # a repeat, as DistributedSampler pads
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
        metric.update(["two", "red"], [["2"] * 10, ["blue"] * 10], torch.tensor([1, 2]))
    else:  # question 1 again: DistributedSampler pads the last rank with repeats
        metric.update(["yes", "two"], [["yes"] * 3 + ["no"] * 7, ["2"] * 10], torch.tensor([3, 1]))
    return metric.compute()


@pytest.mark.slow
def test_ddp_gathers_every_rank(tmp_path):
    for scores in on_two_ranks(_scores_on_one_rank, tmp_path):
        assert scores == pytest.approx({1: 1.0, 2: 0.0, 3: 0.9})
