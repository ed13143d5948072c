"""VQAv2 accuracy, as the official evaluation computes it (Antol et al. 2015; Goyal et al. 2017).

An answer is normalised (punctuation, number words to digits, articles, contractions) and
compared with the 10 annotators' answers, normalised the same way. For each of the 10
leave-one-out subsets of 9 annotators the answer scores ``min(#matching / 3, 1)``; the
accuracy of a question is the mean over the 10 subsets. So an answer given by 4 or more
annotators scores 1, by exactly 3 scores 0.9 (3 subsets see only 2 of them), by 1 scores 0.3,
and by nobody 0.

The official script normalises the ground truth only when the annotators disagree, as
VQAv2's answers were normalised when collected; here they are always normalised, which
gives the same score on VQAv2 and the right one on answers that were not.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
# Spellings without the apostrophe, as annotators type them, mapped to the contraction.
_CONTRACTIONS = {
    word.replace("'", ""): word
    for word in (
        "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't", "don't",
        "hadn't", "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he'll", "he's", "how'd", "how'll",
        "how's", "i'd", "i'd've", "i'm", "i've", "isn't", "it'd", "it'd've", "it'll", "let's", "ma'am",
        "mightn't", "mightn't've", "might've", "mustn't", "must've", "needn't", "not've", "o'clock",
        "oughtn't", "shan't", "she'd", "she'd've", "she'll", "she's", "should've", "shouldn't",
        "shouldn't've", "somebody'd", "somebody'll", "somebody's", "someone'd", "someone'll", "someone's",
        "something'd", "something'll", "that's", "there'd", "there'd've", "there're", "there's", "they'd",
        "they'd've", "they'll", "they're", "they've", "twas", "wasn't", "we'd", "we'd've", "we'll", "we're",
        "we've", "weren't", "what'll", "what're", "what's", "what've", "when's", "where'd", "where's",
        "where've", "who'd", "who'd've", "who'll", "who're", "who's", "who've", "why'll", "why're", "why's",
        "won't", "would've", "wouldn't", "wouldn't've", "y'all", "y'all'd've", "you'd", "you'd've",
        "you'll", "you're", "you've",
    )
    if "'" in word
}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!"]
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_IN_NUMBER = re.compile(r"(?<!\d)\.(?!\d)")


def _strip_punctuation(text: str) -> str:
    for mark in _PUNCTUATION:
        # A mark touching a space is dropped; one inside a word ("t-shirt") becomes a space,
        # except in numbers with thousands commas ("1,000").
        if f"{mark} " in text or f" {mark}" in text or _DIGIT_COMMA_DIGIT.search(text):
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    return _PERIOD_NOT_IN_NUMBER.sub("", text)


def normalize_answer(answer: str) -> str:
    """The official VQA answer normalisation: "Two." -> "2", "a circle" -> "circle", "dont" -> "don't"."""
    text = _strip_punctuation(answer.replace("\n", " ").replace("\t", " ").strip().lower())
    words = [_NUMBER_WORDS.get(word, word) for word in text.split()]
    words = [_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy of one answer against the annotators' answers (10 in VQAv2)."""
    if not answers:
        raise ValueError("a VQA question needs at least one ground-truth answer")
    predicted = normalize_answer(prediction)
    matches = [normalize_answer(answer) == predicted for answer in answers]
    total = sum(matches)
    # Leave annotator i out: the others that match are total - matches[i].
    return sum(min(1.0, (total - match) / 3) for match in matches) / len(answers)


def most_frequent_answer(answers: Iterable[str]) -> str:
    """The most common normalised answer; ties go to the one seen first."""
    counts = Counter(normalize_answer(answer) for answer in answers)
    return counts.most_common(1)[0][0]


def majority_answers(groups: Iterable[tuple[str, Sequence[str]]]) -> dict[str, str]:
    """The majority-answer baseline: for each group (question type), its most frequent answer.

    ``groups`` yields (question type, annotators' answers) for every training question.
    """
    answers: dict[str, list[str]] = defaultdict(list)
    for group, group_answers in groups:
        answers[group].extend(group_answers)
    return {group: most_frequent_answer(values) for group, values in answers.items()}


class VQAAccuracy(Metric):
    """Per-question VQA accuracy, kept with the question ids so the caller can break it down.

    ``update(predictions, answers, question_ids)`` scores each prediction; ``compute()``
    returns ``{question_id: accuracy}`` over every rank's questions. A question seen twice
    (DistributedSampler pads ranks by repeating samples) counts once.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("question_ids", default=[], dist_reduce_fx="cat")
        self.add_state("scores", default=[], dist_reduce_fx="cat")

    def update(self, predictions: Sequence[str], answers: Sequence[Sequence[str]], question_ids: Tensor) -> None:
        if not len(predictions) == len(answers) == len(question_ids):
            raise ValueError(f"{len(predictions)} predictions, {len(answers)} answer lists, "
                             f"{len(question_ids)} question ids")
        scores = [vqa_accuracy(prediction, truth) for prediction, truth in zip(predictions, answers)]
        self.question_ids.append(question_ids.detach().long().reshape(-1))
        self.scores.append(torch.tensor(scores, dtype=torch.float64, device=self.device))

    def compute(self) -> dict[int, float]:
        # A list of tensors per update here; one tensor once torchmetrics has gathered the ranks.
        if len(self.question_ids) == 0:
            return {}
        ids = dim_zero_cat(self.question_ids).tolist()
        scores = dim_zero_cat(self.scores).tolist()
        return dict(zip(ids, scores))


def accuracy_breakdown(scores: Mapping[int, float], groups: Mapping[str, Mapping[int, str]]) -> dict[str, float]:
    """Mean accuracy overall and per value of each grouping.

    ``groups`` maps a grouping name to {question id: group}, e.g.
    ``{"question_type": {...}, "answer_type": {...}}``. Returns
    ``{"accuracy": ..., "question_type/colour": ..., "answer_type/number": ...}``.
    """
    if not scores:
        return {}
    table = {"accuracy": sum(scores.values()) / len(scores)}
    for grouping, of_question in groups.items():
        members: dict[str, list[float]] = defaultdict(list)
        for question_id, score in scores.items():
            members[of_question[question_id]].append(score)
        for group in sorted(members):
            table[f"{grouping}/{group}"] = sum(members[group]) / len(members[group])
    return table
