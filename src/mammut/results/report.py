"""docs/results.md from the finished stages: the chain's headline table and each run's metrics, then
each study's table (its stages beside the chain stages it is compared with) and its runs' metrics."""

from __future__ import annotations

from mammut.results.runner import StageResult
from mammut.results.stages import Stage, Study

HEADER = """# Results

Written by `make results` (`python -m mammut.results`), which runs the chain below from a fresh
demo world, as a user would: pretraining, then each fine-tuning recipe from its final checkpoint,
and the baselines that need runs of their own. The README and the task pages quote their
headline numbers from this file where the run is here, and otherwise name the date and machine
of the run they quote. Each run's command is as a user types it; the runs log to
`runs/results/<stage>/version_0` (TensorBoard), and each finished run leaves its record in
`docs/results/<stage>.json`, which this file is written from. A stage not yet run says so; `make
results` runs what is missing and resumes a stage that was stopped part-way, so the chain may be
finished in pieces, on other days or machines: each run names its machine. `python -m
mammut.results --redo pretrain` runs pretraining and every stage from it again (the fine-tuning
stages need its checkpoint on the machine they run on). Minutes are wall time; CPU minutes,
where recorded, are the user and system time of the run's processes: on a machine left to the
run, wall minutes are about CPU minutes over the cores, and far more mean it was shared.

[Studies](#studies) below the chain change one thing at a time against its runs; each runs when
asked for, e.g. `make results ARGS="--study cause"`.
"""


def percent_or_number(tag: str, value: float) -> str:
    """Shares (accuracy, recall, AP) as percentages; caption scores, whose scale is not 0-1, and counts as numbers."""
    if tag.endswith("images"):
        return f"{value:.0f}"
    if any(score in tag for score in ("CIDEr", "BLEU")):
        return f"{value:.3f}"
    return f"{100 * value:.1f}%"


def minutes(result: StageResult) -> str:
    """Wall minutes, and in brackets the CPU minutes of the run's processes where recorded."""
    return f"{result.minutes:.1f}" + (f" ({result.cpu_minutes:.1f})" if result.cpu_minutes is not None else "")


def headline_table(stages: list[Stage], results: dict[str, StageResult], named: bool = False) -> str:
    """One row a stage; ``named``: the row says the stage's name too (a study's rows name each other)."""
    rows = ["| run | result (baseline) | minutes (CPU minutes) | command |", "|---|---|---|---|"]
    for stage in stages:
        result = results.get(stage.name)
        title = f"`{stage.name}`: {stage.title}" if named else stage.title
        if result is None:
            rows.append(f"| {title} | not run yet | | |")
            continue
        shown = []
        for label, tag in stage.headline:
            if tag not in result.metrics:
                shown.append(f"{label} not logged")
                continue
            value = percent_or_number(tag, result.metrics[tag])
            baseline = result.baselines.get(tag)
            shown.append(f"{label} {value}" + (f" ({percent_or_number(tag, baseline)})" if baseline is not None else ""))
        rows.append(f"| {title} | {'; '.join(shown)} | {minutes(result)} | `{result.command}` |")
    return "\n".join(rows)


def stage_section(stage: Stage, result: StageResult, level: int = 3) -> str:
    spent = f"{result.minutes:.1f} minutes" + (f" ({result.cpu_minutes:.1f} CPU minutes)"
                                               if result.cpu_minutes is not None else "")
    lines = [f"{'#' * level} {stage.name}: {stage.title}", "",
             f"`{result.command}`", "",
             f"{spent}; finished {result.finished} on {result.machine}.", "",
             "| metric | model | baseline |", "|---|---|---|"]
    for tag in sorted(result.metrics):
        baseline = result.baselines.get(tag)
        lines.append(f"| {tag} | {percent_or_number(tag, result.metrics[tag])} | "
                     f"{percent_or_number(tag, baseline) if baseline is not None else ''} |")
    return "\n".join(lines)


def summary(stages: list[Stage], results: dict[str, StageResult]) -> str:
    done = [results[stage.name] for stage in stages if stage.name in results]
    machines = sorted({result.machine for result in done})
    return (f"{len(done)} of {len(stages)} runs finished, {sum(r.minutes for r in done):.0f} minutes of training "
            f"and evaluation in all, on {' and '.join(machines) or 'no machine yet'}"
            + (f"; the last on {max(r.finished for r in done)}." if done else "."))


def study_section(study: Study, chain: list[Stage], results: dict[str, StageResult]) -> list[str]:
    compared = [stage for stage in chain if stage.name in study.compare]
    return [f"### {study.name}: {study.title}", study.question,
            f"`make results ARGS=\"--study {study.name}\"`. " + summary(list(study.stages), results),
            headline_table([*compared, *study.stages], results, named=True),
            *[stage_section(stage, results[stage.name], level=4) for stage in study.stages if stage.name in results]]


def results_markdown(chain: list[Stage], studies: list[Study], results: dict[str, StageResult]) -> str:
    sections = [stage_section(stage, results[stage.name]) for stage in chain if stage.name in results]
    return "\n\n".join([HEADER.rstrip(), summary(chain, results), "## Headline", headline_table(chain, results),
                        "## Each run", *sections, "## Studies",
                        *[part for study in studies for part in study_section(study, chain, results)]]) + "\n"
