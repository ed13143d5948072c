"""Captioning metrics: CIDEr-D and BLEU-4 over the whole evaluation set.

Scores come from pycocoevalcap's own scorers (`Cider` is the CIDEr-D variant used by
the COCO caption leaderboard; `Bleu` is corpus-level BLEU), on the scale they report:
CIDEr-D as its raw number (0 to about 10, x10 built in), BLEU-4 in [0, 1].

CIDEr-D weighs n-grams by their inverse document frequency over the *whole* reference
set, so it must be computed once over every caption of the evaluation set: averaging
per-batch scores gives a different, wrong number. `CaptionMetrics` therefore keeps
every prediction and its references, and scores them all in `compute()`.

Distributed runs: strings cannot travel through torchmetrics' tensor gathering (list
states with `dist_reduce_fx=None` stay on their rank), so `compute()` gathers them with
`torch.distributed.all_gather_object` when a process group of more than one rank is
initialised. Every rank must then call `compute()`, as with any torchmetrics Metric.
Padding samplers repeat samples across ranks; pass `sample_ids` to count each once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from torch import Tensor
from torchmetrics import Metric

from mammut.metrics.caption_tokenization import tokenize_caption

CIDER_D = "CIDEr-D"
BLEU_4 = "BLEU-4"


def score_captions(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """CIDEr-D and BLEU-4 of untokenised predictions, one per image, against their references."""
    _check_captions(predictions, references)
    if not predictions:
        raise ValueError("no captions to score")
    # pycocoevalcap scorers take {image key: [tokenised caption, ...]}.
    predicted = {i: [tokenize_caption(p)] for i, p in enumerate(predictions)}
    referenced = {i: [tokenize_caption(r) for r in refs] for i, refs in enumerate(references)}
    cider, _ = Cider().compute_score(referenced, predicted)
    bleu, _ = Bleu(4).compute_score(referenced, predicted, verbose=0)
    return {CIDER_D: float(cider), BLEU_4: float(bleu[3])}


class CaptionMetrics(Metric):
    """CIDEr-D and BLEU-4 of generated captions over the gathered evaluation set.

    `compute()` returns `{"CIDEr-D": tensor, "BLEU-4": tensor}`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # Python lists of strings: torchmetrics leaves them on their rank (see module docstring).
        self.add_state("predictions", default=[], dist_reduce_fx=None)
        self.add_state("references", default=[], dist_reduce_fx=None)
        self.add_state("sample_ids", default=[], dist_reduce_fx=None)

    def update(
        self,
        predictions: Sequence[str],
        references: Sequence[Sequence[str]],
        sample_ids: Sequence[Hashable] | None = None,
    ) -> None:
        """Add generated captions, each with its list of reference captions.

        Args:
            predictions: one generated caption per image.
            references: the reference captions of each image (at least one each).
            sample_ids: optional id of each image; an id seen again is ignored, so samples
                repeated by a padding sampler count once. Samples without ids always count.
        """
        _check_captions(predictions, references)
        if sample_ids is None:
            sample_ids = [None] * len(predictions)
        elif len(sample_ids) != len(predictions):
            raise ValueError(f"got {len(sample_ids)} sample_ids for {len(predictions)} predictions")
        self.predictions.extend(predictions)
        # Tuples, not lists: torchmetrics' sync flattens list states whose items are lists.
        self.references.extend([tuple(refs) for refs in references])
        self.sample_ids.extend(sample_ids)

    def _apply(self, fn, exclude_state: Sequence[str] = ()) -> CaptionMetrics:
        # Captions and ids have no device: moving the metric (Lightning moves the module to the CPU
        # when a run ends, also one stopped in the middle of a validation) leaves them as they are.
        return super()._apply(fn, exclude_state=(*exclude_state, "predictions", "references", "sample_ids"))

    def compute(self) -> dict[str, Tensor]:
        samples = list(zip(self.sample_ids, self.predictions, self.references))
        if self._to_sync:
            samples = _gathered_across_ranks(samples, self.process_group)
        predictions, references = [], []
        seen_ids = set()
        for sample_id, prediction, refs in samples:
            if sample_id is not None:
                if sample_id in seen_ids:
                    continue
                seen_ids.add(sample_id)
            predictions.append(prediction)
            references.append(refs)
        if not predictions:
            raise ValueError(f"{type(self).__name__}.compute() called before any update()")
        scores = score_captions(predictions, references)
        return {name: torch.tensor(value, device=self.device) for name, value in scores.items()}


@dataclass(frozen=True)
class CaptionBaseline:
    """Scores of predicting one fixed caption for every image."""

    caption: str
    scores: dict[str, float]


def most_frequent_caption_baseline(
    train_captions: Iterable[str], references: Sequence[Sequence[str]]
) -> CaptionBaseline:
    """Score of always predicting the most frequent training caption (after tokenisation).

    A model has learnt something about the images only when it beats this. Ties go to
    the caption seen first.
    """
    counts = Counter(tokenize_caption(caption) for caption in train_captions)
    if not counts:
        raise ValueError("no training captions to choose a baseline from")
    caption, _ = counts.most_common(1)[0]
    return CaptionBaseline(caption, score_captions([caption] * len(references), references))


def _check_captions(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists")
    for index, (prediction, refs) in enumerate(zip(predictions, references)):
        if not isinstance(prediction, str):
            raise TypeError(f"prediction {index} is {type(prediction).__name__}, not str")
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references of sample {index} must be a non-empty list of strings, got {refs!r}")


def _gathered_across_ranks(items: list, process_group=None) -> list:
    """Every rank's items, in rank order; the items themselves when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return items
    world_size = dist.get_world_size(process_group)
    if world_size == 1:
        return items
    per_rank = [None] * world_size
    dist.all_gather_object(per_rank, items, group=process_group)
    return [item for rank_items in per_rank for item in rank_items]
