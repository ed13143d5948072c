"""Progress off a terminal: a line per logging interval in a log file, the usual bar on a terminal."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import tty
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import TQDMProgressBar

from mammut.progress import LineProgress, progress_for_log_file

from conftest import REPO, THREADS
from tiny_run import TINY_MODEL


def fit_command(data_root: Path, out: Path) -> list[str]:
    """6 tiny steps, a line every 2, one short validation after the last step."""
    return [
        sys.executable, "-m", "mammut.cli", "fit", "--config", str(REPO / "configs/pretrain.yaml"), *TINY_MODEL,
        f"--data.root={data_root}", "--data.batch_size=8", "--data.eval_batch_size=12", "--data.num_workers=0",
        "--trainer.precision=32-true", "--trainer.accelerator=cpu", "--trainer.max_steps=6",
        "--trainer.log_every_n_steps=2", "--trainer.val_check_interval=6", "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
    ]


ENV = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": str(THREADS)}


@pytest.mark.slow
def test_a_log_file_gets_a_line_per_interval_and_no_bar(tiny_demo, tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as file:
        result = subprocess.run(fit_command(tiny_demo, tmp_path), cwd=REPO, env=ENV, stdout=file,
                                stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert result.returncode == 0, text[-4000:]
    assert "\r" not in text
    lines = re.findall(r"^step (\d+)/6 \(epoch 0\) \| train/loss (\S+) \| lr (\S+) \| (\S+) it/s \| eta \S+$",
                       text, flags=re.MULTILINE)
    assert [int(step) for step, *_ in lines] == [2, 4, 6], text
    assert all(float(loss) > 0 and float(lr) > 0 for _, loss, lr, _ in lines)
    assert re.search(r"^validation at step 6 \(epoch 0\) done in \d+s", text, flags=re.MULTILINE), text


@pytest.mark.slow
def test_a_terminal_gets_the_progress_bar(tiny_demo, tmp_path):
    leader, follower = os.openpty()
    tty.setraw(follower)  # no newline translation, so a carriage return can only come from the bar
    # A terminal's size: tqdm draws nothing on one 0 columns wide.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen(fit_command(tiny_demo, tmp_path), cwd=REPO, env=ENV, stdout=follower,
                               stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    text = b"".join(chunks).decode(errors="replace")
    assert process.wait(timeout=60) == 0, text[-4000:]
    # Lightning's own bar, redrawn in place: tqdm's (carriage returns) or, where rich is installed
    # (peft's dependencies bring it), rich's (cursor escapes).
    assert "Epoch 0" in text and ("\r" in text or "\x1b[" in text)
    assert not re.search(r"^step \d+/6", text, flags=re.MULTILINE)


def test_line_progress_is_chosen_only_off_a_terminal_and_only_by_default(monkeypatch, tmp_path):
    leader, follower = os.openpty()
    with open(follower, "w") as terminal, open(tmp_path / "log", "w") as file:
        monkeypatch.setattr(sys, "stdout", terminal)
        assert progress_for_log_file({"callbacks": []}) == []
        monkeypatch.setattr(sys, "stdout", file)
        chosen = progress_for_log_file({"callbacks": None, "enable_progress_bar": None})
        assert len(chosen) == 1 and isinstance(chosen[0], LineProgress)
        # The user's choice wins: a bar, no bar, or a progress-bar callback of their own.
        assert progress_for_log_file({"enable_progress_bar": True}) == []
        assert progress_for_log_file({"enable_progress_bar": False}) == []
        assert progress_for_log_file({"barebones": True}) == []
        assert progress_for_log_file({"callbacks": [TQDMProgressBar()]}) == []
    os.close(leader)
