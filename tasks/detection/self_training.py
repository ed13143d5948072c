"""``python -m mammut.tasks.detection.self_training``: rounds of OWL-ST self-training (Minderer et al.
2023, arXiv 2306.09683, Sec. 3), each three runs of ``mammut``:

1. **pseudo-label**: the teacher (a detector checkpoint) looks in each captioned training image for
   the queries of its captions and writes ``pseudo_labels.json`` (``mammut predict`` with
   ``--data.pseudo_label_captions``; ``pseudo_labels.py``). With ``--check-*``, it labels a
   captioned split whose true boxes are known the same way (the demo's val split, where the novel
   classes are boxed), and the pseudo-boxes are scored against them (``pseudo_label_quality.py``);
2. **self-train**: a detector learns the pseudo-boxes, starting from the pretrain checkpoint as
   OWL-ST's student starts from the image-text model, not from its teacher
   (``configs/finetune_detection_selftrain.yaml``);
3. **fine-tune** on the human boxes (``configs/finetune_detection.yaml``), from step 2's weights,
   as OWL-ST fine-tunes on LVIS base; its val figures are the round's result, and it is the next
   round's teacher.

    python -m mammut.tasks.detection.self_training --pretrain runs/pretrain/version_0/checkpoints/last.ckpt \\
        --detector runs/finetune_detection/version_0/checkpoints/last.ckpt --rounds 1

Each run logs under ``<runs>/round<r>/<run>/version_0`` (``pseudo_labels``, ``selftrain``,
``finetune``); a run that finished is not run again (``<run>/done``), a stopped one resumes from
its ``last.ckpt``.
Settings after ``--`` go to every run (e.g. ``-- --trainer.max_steps=600
--model.pseudo_labels.box_threshold=0.2``).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from mammut.tasks.detection.pseudo_label_quality import pseudo_label_quality, quality_table

log = logging.getLogger(__name__)

RECIPE = "configs/finetune_detection.yaml"
SELF_TRAINING = "configs/finetune_detection_selftrain.yaml"
MAMMUT = [sys.executable, "-c", "import sys; from mammut.cli import main; sys.exit(main())"]


class Round:
    """The runs of one round, under ``<runs>/round<number>``."""

    def __init__(self, runs: Path, number: int):
        self.folder = runs / f"round{number}"

    def run_folder(self, name: str) -> Path:
        return self.folder / name / "version_0"

    def checkpoint(self, name: str) -> Path:
        return self.run_folder(name) / "checkpoints" / "last.ckpt"

    def run(self, name: str, arguments: list[str], mammut: list[str]) -> None:
        """``mammut <arguments>`` logging to ``run_folder(name)``, unless it finished before;
        a stopped training run resumes from its last checkpoint."""
        done = self.folder / name / "done"
        if done.exists():
            log.info("%s: done, not run again", self.run_folder(name))
            return
        logging_to = [f"--trainer.logger.init_args.save_dir={self.folder}", f"--trainer.logger.init_args.name={name}",
                      "--trainer.logger.init_args.version=0"]
        resume = [f"--ckpt_path={self.checkpoint(name)}"] if arguments[0] == "fit" and self.checkpoint(name).exists() \
            else []
        command = [*mammut, *arguments, *logging_to, *resume]
        log.info("%s: %s", name, " ".join(command[len(mammut):]))
        if subprocess.run(command, check=False).returncode != 0:
            raise RuntimeError(f"{name} of {self.folder} stopped with an error; run again to resume it")
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text("")


def pseudo_label(current: Round, name: str, teacher: Path, captions: str, images: str, extra: list[str],
                 mammut: list[str]) -> Path:
    current.run(name, ["predict", "--config", RECIPE, f"--ckpt_path={teacher}", f"--data.pseudo_label_captions={captions}",
                       f"--data.pseudo_label_images={images}", *extra], mammut)
    return current.run_folder(name) / "pseudo_labels.json"


def self_train(pretrain: Path, detector: Path, rounds: int, runs: Path, captions: str, images: str,
               check: tuple[str, str, Path] | None, extra: list[str], mammut: list[str] = MAMMUT) -> Path:
    """Runs the rounds; returns the final detector's checkpoint. ``check``: captions, images and
    true boxes of a split to score each round's pseudo-boxes on."""
    teacher = detector
    for number in range(1, rounds + 1):
        current = Round(runs, number)
        labels = pseudo_label(current, "pseudo_labels", teacher, captions, images, extra, mammut)
        if check is not None:
            check_captions, check_images, truth = check
            check_labels = pseudo_label(current, "pseudo_label_check", teacher, check_captions, check_images, extra, mammut)
            rows, unnamed = pseudo_label_quality(check_labels, truth)
            table = quality_table(rows, unnamed)
            (current.folder / "pseudo_label_quality.md").write_text(table + "\n")
            print(f"round {number}: the teacher's pseudo-boxes of {check_captions} against {truth}\n{table}", flush=True)
        current.run("selftrain", ["fit", "--config", RECIPE, "--config", SELF_TRAINING, f"--model.init_from={pretrain}",
                                  f"--data.train_annotations={labels.resolve()}", f"--data.train_images={images}",
                                  *extra], mammut)
        current.run("finetune", ["fit", "--config", RECIPE, f"--model.init_from={current.checkpoint('selftrain')}",
                                 *extra], mammut)
        teacher = current.checkpoint("finetune")
    return teacher


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m mammut.tasks.detection.self_training",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain", type=Path, required=True, help="the pretrain checkpoint every student starts from")
    parser.add_argument("--detector", type=Path, required=True, help="the first round's teacher: a detector checkpoint")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of self-training (default: %(default)s)")
    parser.add_argument("--runs", type=Path, default=Path("runs/detection_selftrain"),
                        help="where the rounds log (default: %(default)s)")
    parser.add_argument("--captions", default="annotations/captions_train.json",
                        help="the captioned images to pseudo-label, relative to the data root (default: %(default)s)")
    parser.add_argument("--images", default="images/train", help="their folder (default: %(default)s)")
    parser.add_argument("--check-captions", help="a captioned split with known true boxes, relative to the data root "
                                                 "(e.g. annotations/captions_val.json), pseudo-labelled to score the labels")
    parser.add_argument("--check-images", help="its images' folder, relative to the data root (e.g. images/val)")
    parser.add_argument("--check-truth", type=Path, help="its true boxes (e.g. data/demo/annotations/instances_val.json)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    checks = (args.check_captions, args.check_images, args.check_truth)
    if any(checks) and not all(checks):
        parser.error("--check-captions, --check-images and --check-truth go together")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M")
    for path in (args.pretrain, args.detector):
        if not path.exists():
            parser.error(f"{path} does not exist")
    try:
        final = self_train(args.pretrain, args.detector, args.rounds, args.runs, args.captions, args.images,
                           checks if all(checks) else None, extra)
    except RuntimeError as error:
        print(f"self_training: {error}", file=sys.stderr)
        return 1
    print(f"final detector: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
