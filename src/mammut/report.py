"""What an evaluation shows a person: the scores beside their baselines as a table, and samples
(pictures with the model's text underneath) in TensorBoard."""

from __future__ import annotations

from torch import Tensor

from mammut.visualize import captioned_images


def report_table(report) -> str:
    """Each score of a ``TaskReport`` beside its baseline, and the number of examples behind it where known."""
    counts = bool(report.counts)
    width = max([28, *(len(name) + 2 for name in report.scores)])
    rows = [f"{'metric':<{width}}{'model':>10}{'baseline':>10}" + (f"{'examples':>10}" if counts else "")]
    for name, value in report.scores.items():
        base = report.baselines.get(name)
        row = f"{name:<{width}}{float(value):>10.4f}{'' if base is None else f'{base:>10.4f}':>10}"
        rows.append(row + (f"{report.counts.get(name, ''):>10}" if counts else ""))
    return "\n".join(rows)


def log_samples(logger, tag: str, samples: tuple[Tensor, list[str]] | None, step: int) -> None:
    """Images (or clips, as strips of frames) with their texts, to a TensorBoard logger."""
    experiment = getattr(logger, "experiment", None) if logger else None
    if samples is None or not hasattr(experiment, "add_images"):
        return
    images, texts = samples
    experiment.add_images(tag, captioned_images(images, texts), step)
    experiment.add_text(tag, "\n\n".join(texts), step)
