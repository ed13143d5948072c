"""VQAv2 accuracy, as the official evaluation computes it (Antol et al. 2015; Goyal et al. 2017).

Follows ``VQAEval`` in salesforce/LAVIS ``lavis/common/vqa_tools/vqa_eval.py`` (commit
200ac17256998f4407a2744ca1c7e8ba5c3bf299; e33ee8b65ab82c44f7fcc370d365acc67337ca2a scores the
same), itself a copy of GT-Vision-Lab/VQA ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` as of
c4e6a0e4e84b9702d99800d3393652d92b5df224. An older revision there (07aecec) differs: it also strips
``:`` and ``'`` but not ``!``, ``-``, ``{``, ``}``, maps contractions to curly apostrophes, and
reports per-question and per-type accuracies from the last leave-one-out score, not the mean.

The answer is normalised (``mammut.answers.normalize_answer``) and compared with each
annotator's answer. For each of the 10 leave-one-out subsets of 9 annotators it scores
``min(#matching / 3, 1)``; the question's accuracy is the mean over the subsets. So an answer
given by 4 or more annotators scores 1, by exactly 3 scores 0.9, by 1 scores 0.3, by nobody 0.

Quirks reproduced, so that scores equal the official ones on every input:

- The ground truth is left as it is when all annotators gave the same string, and otherwise
  gets the punctuation step only: no lower-casing, stripping, number words or articles. So
  ``["two"] * 10`` never matches a prediction, which is normalised to "2".
- The punctuation quirks of ``mammut.answers``: periods after digits are dropped ("3." -> "3"),
  at most 32 periods are dropped, and a mark's fate is decided on the text as given.
- Annotator i is left out by position; the official script compares answer dicts, whose unique
  ``answer_id`` makes that the same.

Per question the official script reports ``round(100 * accuracy, 2)`` but averages the unrounded
values; here the unrounded accuracy (a fraction) is kept, and rounding is left to display.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

# normalize_answer is part of this module's interface too.
from mammut.answers import normalize_answer, strip_punctuation


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy of one answer against the annotators' answers (10 in VQAv2)."""
    if not answers:
        raise ValueError("a VQA question needs at least one ground-truth answer")
    predicted = normalize_answer(prediction)
    if len(set(answers)) > 1:  # the official script touches the ground truth only then
        answers = [strip_punctuation(answer) for answer in answers]
    matches = [answer == predicted for answer in answers]
    total = sum(matches)
    # Leave annotator i out: the others that match are total - matches[i].
    return sum(min(1.0, (total - match) / 3) for match in matches) / len(answers)


def exact_match_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """1 if the normalised answer equals a normalised reference, else 0: the accuracy of
    single-answer datasets (MSRVTT-QA, MSVD-QA), where the VQAv2 formula, made for 10
    annotators, would score a right answer 0."""
    if not answers:
        raise ValueError("a question needs at least one ground-truth answer")
    return float(normalize_answer(prediction) in {normalize_answer(answer) for answer in answers})


# How a generated answer is scored: "vqa" for VQAv2's 10 annotators, "exact_match" for one reference.
ANSWER_SCORING = {"vqa": vqa_accuracy, "exact_match": exact_match_accuracy}


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

    ``update(predictions, answers, question_ids)`` scores each prediction (``scoring``: "vqa" or
    "exact_match", see ``ANSWER_SCORING``); ``compute()``
    returns ``{question_id: accuracy}`` over every rank's questions. A question seen twice
    (DistributedSampler pads ranks by repeating samples) counts once.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, scoring: str = "vqa", **kwargs) -> None:
        super().__init__(**kwargs)
        if scoring not in ANSWER_SCORING:
            raise ValueError(f"answer scoring must be one of {sorted(ANSWER_SCORING)}, got {scoring!r}")
        self.scoring = scoring
        self.add_state("question_ids", default=[], dist_reduce_fx="cat")
        self.add_state("scores", default=[], dist_reduce_fx="cat")

    def update(self, predictions: Sequence[str], answers: Sequence[Sequence[str]], question_ids: Tensor) -> None:
        if not len(predictions) == len(answers) == len(question_ids):
            raise ValueError(f"{len(predictions)} predictions, {len(answers)} answer lists, "
                             f"{len(question_ids)} question ids")
        score = ANSWER_SCORING[self.scoring]
        scores = [score(prediction, truth) for prediction, truth in zip(predictions, answers)]
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
