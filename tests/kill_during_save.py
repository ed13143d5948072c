"""Run ``mammut fit`` and kill the process with SIGKILL in the middle of one checkpoint save.

    python kill_during_save.py JOBS.json

JOBS.json lists runs, each ``{"save": SAVE, "point": POINT, "tmpdir": DIR, "args": [mammut fit
arguments...]}``. SAVE counts checkpoint writes from 1; POINT is where in that write the process
dies: ``write:K`` before the K-th chunk is written, ``fsync`` before the data is flushed to disk,
``replace`` before the staged file is renamed over the checkpoint, ``replaced`` just after.
Nothing is mocked: the save is the real one, and SIGKILL gives it no chance to clean up.

Each run is a child forked from this process once it has imported mammut (a few seconds of
imports paid once), before it has run anything; the exit status of each is written to
JOBS.json's ``.status`` file, in order: the negative signal number, as subprocess gives it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile

from mammut import checkpointing
from mammut.cli import main

KILL = signal.SIGKILL


def _is_call_to(function, module: str, name: str) -> bool:
    return getattr(function, "__name__", None) == name and getattr(function, "__module__", None) == module


def arm(point: str):
    """A profile function that kills this process at ``point`` of the save that follows."""
    writes = 0

    def profile(frame, event, function):
        nonlocal writes
        if event == "c_call" and getattr(function, "__name__", None) == "write" \
                and type(getattr(function, "__self__", None)).__name__ == "BufferedWriter":
            writes += 1
            if point == f"write:{writes}":
                os.kill(os.getpid(), KILL)
        if event == "c_call" and point in ("fsync", "replace") and _is_call_to(function, "posix", point):
            os.kill(os.getpid(), KILL)
        if event == "c_return" and point == "replaced" and _is_call_to(function, "posix", "replace"):
            os.kill(os.getpid(), KILL)

    return profile


def run(save: int, point: str, args: list[str]) -> None:
    checkpointing.WRITE_CHUNK = 4096  # many writes per checkpoint, so a kill can land between them
    # The write itself, which happens once the next step's loss has passed the guard (mammut.stopping).
    original = checkpointing.AtomicCheckpointIO._apply
    saves = 0

    def apply(self, action, *arguments, **kwargs):
        nonlocal saves
        saves += action == "save"
        if action == "save" and saves == save:
            sys.setprofile(arm(point))
        try:
            return original(self, action, *arguments, **kwargs)
        finally:
            sys.setprofile(None)

    checkpointing.AtomicCheckpointIO._apply = apply
    main(args)


def run_in_child(job: dict) -> int:
    pid = os.fork()
    if pid == 0:
        os.environ["TMPDIR"] = job["tmpdir"]
        tempfile.tempdir = None  # read TMPDIR again
        try:
            run(job["save"], job["point"], job["args"])
        finally:
            os._exit(1)  # not killed: the test fails on this status
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


if __name__ == "__main__":
    jobs_file = sys.argv[1]
    with open(jobs_file) as f:
        statuses = [run_in_child(job) for job in json.load(f)]
    with open(jobs_file + ".status", "w") as f:
        json.dump(statuses, f)
