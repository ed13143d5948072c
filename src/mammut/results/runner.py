"""Run the chain's stages one after another, each resumable, and keep what each one measured.

A stage logs to ``<runs>/<name>/version_0``. When it ends, ``<records>/<name>.json`` records its
final val metrics (and their baselines), the command, its minutes, the machine and when it
finished; a stage with a record is not run again. Records live apart from the runs (by default in
the repository, beside docs/results.md), so the chain can be run in pieces, on different days or
machines; a stage that starts from another needs that stage's checkpoint on this machine, and
``forget`` clears a stage and those that start from it to run them again. A stage stopped
part-way (a kill, a reboot, a closed terminal) restarts from its ``last.ckpt`` with
``--ckpt_path``: its minutes are the sum of its attempts' wall time. Its CPU minutes (the run's processes, loader
workers included) are recorded too: wall minutes well above CPU minutes over the cores mean the
machine was shared with other work while the stage ran.
"""

from __future__ import annotations

import json
import logging
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mammut.checkpointing import read_checkpoint
from mammut.machine import describe_machine
from mammut.run_logs import final_values

from .stages import ALL_STAGES, Stage

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    name: str
    command: str                           # as a user types it
    minutes: float
    finished: str                          # ISO date and time
    metrics: dict[str, float]              # "task/metric" -> the value at the run's last validation
    baselines: dict[str, float]            # "task/metric" -> its baseline, where the run logs one
    step: int                              # the TensorBoard step of that validation
    machine: str                           # where it ran (a chain run in pieces may span machines)
    cpu_minutes: float | None = None       # user + system time of its processes (None: not recorded)

    @classmethod
    def read(cls, path: Path) -> StageResult:
        return cls(**json.loads(path.read_text()))


class ChainRunner:
    """Runs stages with ``mammut fit`` under ``runs`` (one folder per stage), their records in ``records``.

    ``extra``: settings added to every stage's command (e.g. a smaller model for a quick check);
    ``mammut``: the command that runs mammut (this interpreter's, by default).
    """

    MAMMUT = [sys.executable, "-c", "import sys; from mammut.cli import main; sys.exit(main())"]

    def __init__(self, runs: Path, records: Path, extra: list[str] | None = None, mammut: list[str] | None = None):
        self.runs, self.records, self.extra = Path(runs), Path(records), list(extra or [])
        self.mammut = mammut or self.MAMMUT

    def folder(self, stage: Stage) -> Path:
        return self.runs / stage.name / "version_0"

    def done_file(self, stage: Stage) -> Path:
        return self.records / f"{stage.name}.json"

    def result(self, stage: Stage) -> StageResult | None:
        done = self.done_file(stage)
        return StageResult.read(done) if done.exists() else None

    def checkpoint(self, stage: Stage) -> Path:
        """The stage's final state: what the stages that start from it load."""
        return self.folder(stage) / "checkpoints" / "last.ckpt"

    def run(self, stage: Stage, start: Stage | None) -> StageResult:
        """Runs ``stage`` (resuming it if it was stopped part-way) unless it is done; ``start``: the
        stage it starts from, which must be done."""
        if (done := self.result(stage)) is not None:
            log.info("%s: done (%s), not run again", stage.name, done.finished)
            return done
        start_checkpoint = None
        if stage.init_from:
            if start is None or (started := self.result(start)) is None:
                raise RuntimeError(f"stage {stage.name!r} starts from stage {stage.init_from!r}, which has not "
                                   f"finished (no {self.done_file(start) if start else stage.init_from})")
            if not self.checkpoint(start).exists():
                raise RuntimeError(f"stage {stage.name!r} starts from {self.checkpoint(start)}, which is not on this "
                                   f"machine (stage {start.name!r} finished {started.finished} on {started.machine}); "
                                   f"--redo {start.name} runs it and the stages that start from it again")
            start_checkpoint = self.checkpoint(start)
        for command, typed in zip(stage.prepare, stage.preparations()):  # quick and deterministic: run every attempt
            if subprocess.run([sys.executable, "-m", *command], check=False).returncode != 0:
                raise RuntimeError(f"stage {stage.name!r}: its preparation `{typed}` failed")
        arguments = stage.arguments(str(start_checkpoint) if start_checkpoint else None)
        logging_to = [f"--trainer.logger.init_args.save_dir={self.runs}", f"--trainer.logger.init_args.name={stage.name}",
                      "--trainer.logger.init_args.version=0"]
        resume = self.checkpoint(stage)
        resuming = [f"--ckpt_path={resume}"] if resume.exists() else []
        attempts_file = self.runs / stage.name / "attempts.json"
        attempts = json.loads(attempts_file.read_text()) if attempts_file.exists() else []
        log.info("%s: %s%s", stage.name, "resuming from " + str(resume) if resuming else "starting",
                 f" (attempt {len(attempts) + 1})")
        began, cpu_before = time.monotonic(), _children_cpu_seconds()
        completed = subprocess.run([*self.mammut, *arguments, *logging_to, *self.extra, *resuming], check=False)
        attempts.append({"seconds": round(time.monotonic() - began, 1), "exit": completed.returncode,
                         "resumed": bool(resuming), "cpu_seconds": round(_children_cpu_seconds() - cpu_before, 1)})
        attempts_file.parent.mkdir(parents=True, exist_ok=True)
        attempts_file.write_text(json.dumps(attempts, indent=1))
        if completed.returncode != 0:
            raise RuntimeError(f"stage {stage.name!r} stopped with exit status {completed.returncode}; "
                               f"run the chain again to resume it from {resume}")
        return self._record(stage, arguments, attempts)

    def _record(self, stage: Stage, arguments: list[str], attempts: list[dict]) -> StageResult:
        values = final_values(self.folder(stage))
        metrics = {tag.removeprefix("val/"): value for tag, (_, value) in values.items() if tag.startswith("val/")}
        baselines = {tag.removeprefix("val_baseline/"): value for tag, (_, value) in values.items()
                     if tag.startswith("val_baseline/")}
        if not metrics:
            raise RuntimeError(f"stage {stage.name!r} finished without a validation in {self.folder(stage)}")
        validated = max(step for step, _ in values.values())
        trained = read_checkpoint(self.checkpoint(stage))["global_step"]
        if trained - validated > 1:  # a validation after optimizer step n is logged at step n - 1 or n
            raise RuntimeError(f"stage {stage.name!r} trained to step {trained}, but its last validation was logged at "
                               f"step {validated}: its final state was never measured. Give it a "
                               "--trainer.val_check_interval that divides its --trainer.max_steps.")
        result = StageResult(
            name=stage.name, command=" && ".join([*stage.preparations(), shlex.join(["mammut", *arguments])]),
            minutes=round(sum(a["seconds"] for a in attempts) / 60, 1),
            cpu_minutes=(round(sum(a["cpu_seconds"] for a in attempts) / 60, 1)
                         if all("cpu_seconds" in a for a in attempts) else None),
            finished=datetime.now(timezone.utc).isoformat(timespec="minutes"),
            metrics=metrics, baselines=baselines, step=validated,
            machine=describe_machine())
        self.done_file(stage).parent.mkdir(parents=True, exist_ok=True)
        self.done_file(stage).write_text(json.dumps(result.__dict__, indent=1) + "\n")
        log.info("%s: done in %.1f minutes", stage.name, result.minutes)
        return result

    def forget(self, names: list[str]) -> list[str]:
        """Deletes the records and runs of the stages ``names`` and of every stage that starts from
        one of them (their results came from the run forgotten); returns the stages forgotten."""
        forgotten = set(names)
        for stage in ALL_STAGES:  # a stage comes after the one it starts from
            if stage.init_from in forgotten:
                forgotten.add(stage.name)
        for stage in ALL_STAGES:
            if stage.name in forgotten:
                self.done_file(stage).unlink(missing_ok=True)
                if (self.runs / stage.name).exists():  # else its last.ckpt would resume the run forgotten
                    shutil.rmtree(self.runs / stage.name)
        return [stage.name for stage in ALL_STAGES if stage.name in forgotten]


def _children_cpu_seconds() -> float:
    """User and system time of this process's finished children and theirs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
