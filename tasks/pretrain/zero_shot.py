"""Zero-shot classification with the contrastive embeddings, as CLIP evaluates ImageNet.

Each class's text embedding is the mean of the (normalised) text embeddings of its name in every
prompt template ("a photo of a {c}."), normalised again; an image is classified by the class
whose embedding is nearest its image embedding (open_clip's ``build_zero_shot_classifier``,
CLIP_benchmark's ``zero_shot_classifier``). Scores: top-1, top-5 and mean per-class recall, each
beside chance (``mammut.metrics.classification``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammut.data.batch import ClassificationBatch
from mammut.metrics.classification import ZeroShotAccuracy, chance_accuracy
from mammut.model import Mammut

PROMPTS_PER_PASS = 1024  # text embeddings computed at a time while building a classifier


@dataclass
class ZeroShotClasses:
    """What zero-shot classification of one set needs from its data."""

    classnames: list[str]
    templates: list[str]
    prompts: Tensor  # (classes, templates, context_length) long: each template filled with each class name


def build_classifier(model: Mammut, prompts: Tensor) -> Tensor:
    """(embed_dim, classes): per class, its prompts' text embeddings averaged and normalised."""
    classes, templates, length = prompts.shape
    flat = prompts.reshape(classes * templates, length)
    embeddings = torch.cat([model.text_embedding(flat[start:start + PROMPTS_PER_PASS]).float()
                            for start in range(0, len(flat), PROMPTS_PER_PASS)])
    return F.normalize(embeddings.reshape(classes, templates, -1).mean(dim=1), dim=-1).T


class ZeroShotClassification(nn.Module):
    """The zero-shot classification sets of an evaluation: a classifier per set, built from the
    model as it is at that evaluation, and the scores of each stage ("val", "test")."""

    def __init__(self):
        super().__init__()
        self.sets: dict[str, ZeroShotClasses] = {}
        self.metrics = nn.ModuleDict()
        self._classifiers: dict[str, Tensor] = {}

    def connect(self, sets: dict[str, ZeroShotClasses]) -> None:
        self.sets = dict(sets)
        self.metrics = nn.ModuleDict({f"{stage}_{name}": ZeroShotAccuracy(len(classes.classnames))
                                      for stage in ("val", "test") for name, classes in self.sets.items()})
        self._classifiers.clear()

    def evaluate(self, model: Mammut, batch: ClassificationBatch, stage: str) -> None:
        if batch.dataset not in self.sets:
            raise KeyError(f"zero-shot set {batch.dataset!r} is not among the data's {sorted(self.sets)}")
        key = f"{stage}_{batch.dataset}"
        if key not in self._classifiers:  # once per evaluation: the model changes between them
            prompts = self.sets[batch.dataset].prompts.to(batch.images.device)
            self._classifiers[key] = build_classifier(model, prompts)
        image_embeddings = model.image_embedding(model.encode_image(batch.images)).float()
        metric = self.metrics[key].to(batch.images.device)
        metric.update(image_embeddings @ self._classifiers[key], batch.labels)

    def report(self, stage: str) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
        """Scores, chance and image counts of the sets this evaluation classified, named
        ``zeroshot/<set>/<score>``; a set that was not due at this evaluation is left out."""
        scores, baselines, counts = {}, {}, {}
        for name, classes in self.sets.items():
            key = f"{stage}_{name}"
            if key not in self._classifiers:
                continue
            computed = self.metrics[key].compute()
            images = int(computed.pop("images"))
            for score, value in computed.items():
                scores[f"zeroshot/{name}/{score}"] = float(value)
                counts[f"zeroshot/{name}/{score}"] = images
            for score, value in chance_accuracy(len(classes.classnames)).items():
                baselines[f"zeroshot/{name}/{score}"] = value
        self.reset(stage)
        return scores, baselines, counts

    def reset(self, stage: str) -> None:
        for name in self.sets:
            self.metrics[f"{stage}_{name}"].reset()
            self._classifiers.pop(f"{stage}_{name}", None)
