"""A run's logged scalars, read back from its TensorBoard event files."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator


def scalars(run: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} over every event file below ``run`` (a resumed run writes several)."""
    out: dict[str, dict[int, float]] = {}
    files = sorted(Path(run).rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"{run}: no TensorBoard event files")
    for file in files:
        events = EventAccumulator(str(file), size_guidance={SCALARS: 0})
        events.Reload()
        for tag in events.Tags()[SCALARS]:
            out.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return out


def final_values(run: Path, prefixes: tuple[str, ...] = ("val/", "val_baseline/")) -> dict[str, tuple[int, float]]:
    """tag -> (step, value) of each tag's last logged step, for the tags that start with ``prefixes``."""
    return {tag: max(values.items()) for tag, values in scalars(run).items() if tag.startswith(prefixes)}
