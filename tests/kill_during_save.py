"""Run ``mammut fit`` and kill the process with SIGKILL in the middle of one checkpoint save.

    python kill_during_save.py SAVE POINT [mammut fit arguments...]

SAVE counts checkpoint writes from 1; POINT is where in that write the process dies:
``write:K`` before the K-th chunk is written, ``fsync`` before the data is flushed to disk,
``replace`` before the staged file is renamed over the checkpoint, ``replaced`` just after.
Nothing is mocked: the save is the real one, and SIGKILL gives it no chance to clean up.
"""

from __future__ import annotations

import os
import signal
import sys

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


if __name__ == "__main__":
    run(int(sys.argv[1]), sys.argv[2], sys.argv[3:])
