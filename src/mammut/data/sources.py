"""A training split made of several named sources, as a config names them (``data.train_sources``).

    train_sources:
      clean:     {annotations: annotations/captions_train.json, images: images/train}
      noisy:     {annotations: sources/noisy/captions.json, images: sources/noisy/images}
      redundant: {annotations: sources/redundant/captions.json, images: sources/redundant/images, weight: 0.5}

Each source is read as a split of its own (the same formats, the same bad-record handling); a
``mammut.data.source_mixing.SourceMixer`` draws one source per training batch, by ``weight`` (the
starting weight, relative to the others) and ``data.mixing``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

SOURCE_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a source's name keys its metrics


@dataclasses.dataclass
class TrainSource:
    annotations: str  # relative to the data root
    images: str  # the image folder, relative to the data root
    weight: float = 1.0  # the starting weight, relative to the other sources'


@dataclasses.dataclass
class TargetSet:
    """A small held-out caption set that the user trusts: ``rule: target_gain`` weighs each source
    by what its steps do for this set's loss (``mammut.learning_progress``). Never trained on."""

    annotations: str  # relative to the data root
    images: str
    size: int = 128  # images per rank in the target batch (its first ones, one caption each)


def plain_target(target: TargetSet | Mapping | None) -> dict | None:
    if target is None:
        return None
    try:
        plain = dataclasses.asdict(target if isinstance(target, TargetSet) else TargetSet(**target))
    except TypeError as error:
        raise ValueError(f"data.adaptive_target: {error}; a target set has annotations, images and optionally size") \
            from None
    if plain["size"] < 2:
        raise ValueError(f"data.adaptive_target.size must be at least 2 images (a contrastive loss needs "
                         f"negatives), got {plain['size']}")
    return plain


def check_source_name(name: str, setting: str) -> None:
    if not SOURCE_NAME.fullmatch(name):
        raise ValueError(f"{setting}: the source name {name!r} may hold only letters, digits, '_' and '-' (it names "
                         "the source's metrics)")


def plain_sources(sources: Mapping[str, TrainSource | dict] | None) -> dict[str, dict] | None:
    """Sources as plain dicts (what a checkpoint stores), checked: names fit metric keys, the fields are known."""
    if sources is None:
        return None
    if not sources:
        raise ValueError("data.train_sources is empty: name at least one source, or leave it unset")
    plain = {}
    for name, spec in sources.items():
        check_source_name(name, "data.train_sources")
        try:
            source = spec if isinstance(spec, TrainSource) else TrainSource(**spec)
        except TypeError as error:
            raise ValueError(f"data.train_sources.{name}: {error}; a source has annotations, images and "
                             "optionally weight") from None
        plain[name] = dataclasses.asdict(source)
    return plain
