"""``python -m mammut.results``: run the results chain (what is missing of it) and write docs/results.md.

    python -m mammut.results                         # every stage, then docs/results.md
    python -m mammut.results --stages pretrain vqa   # these (and the stages they start from)
    python -m mammut.results --write-only            # the file from the stages done so far
    python -m mammut.results --redo pretrain         # pretraining and every stage from it, again
    python -m mammut.results --study fusion          # a study (and the chain stages it starts from, compares with)

Each finished stage leaves its record in docs/results/<stage>.json, and is not run again; records
are kept in the repository so that the chain can be finished in pieces, on other days or
machines (each record names its machine). A fine-tuning stage needs its pretraining stage's
checkpoint on this machine: where that is gone, ``--redo pretrain`` runs them all again.

Run it from the repository root (the recipes' paths are relative to it). Settings after ``--``
go to every stage's ``mammut fit``, e.g. ``-- --trainer.max_steps=20`` for a quick trial of the
chain (its numbers mean nothing; give it another ``--runs`` folder).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .report import results_markdown
from .runner import ChainRunner
from .stages import ALL_STAGES, CHAIN, STUDIES, select


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m mammut.results", description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", choices=[stage.name for stage in ALL_STAGES], default=None,
                        help="run these stages (and those they start from); default: the whole chain")
    parser.add_argument("--study", nargs="+", choices=[study.name for study in STUDIES], default=[],
                        help="run these studies' stages too (and the chain stages they start from and compare with)")
    parser.add_argument("--runs", type=Path, default=Path("runs/results"), help="where the stages log (default: %(default)s)")
    parser.add_argument("--records", type=Path, default=Path("docs/results"),
                        help="where each finished stage's record is kept (default: %(default)s)")
    parser.add_argument("--redo", nargs="+", choices=[stage.name for stage in ALL_STAGES], default=[],
                        help="forget these stages (record and run) and those that start from them, then run")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"), help="the results file (default: %(default)s)")
    parser.add_argument("--write-only", action="store_true", help="write the results file from the finished stages only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M")

    if args.redo and args.write_only:
        parser.error("--redo forgets stages to run them again; it cannot go with --write-only")
    runner = ChainRunner(args.runs, args.records, extra)
    stages = select(args.stages, args.study)
    if args.redo:
        forgotten = runner.forget(args.redo)
        # Run again what was named, the chain's stages, and those of the studies asked for; a study's
        # stage that started from a forgotten run waits for its study.
        asked = {stage.name for stage in CHAIN} | {stage.name for study in STUDIES if study.name in args.study
                                                   for stage in study.stages} | set(args.redo)
        again = [name for name in forgotten if name in asked]
        logging.info("forgotten, to run again: %s", ", ".join(again))
        if waiting := [name for name in forgotten if name not in asked]:
            logging.info("forgotten, to run with their study (--study): %s", ", ".join(waiting))
        named = args.stages if args.stages is not None else [] if args.study else [stage.name for stage in CHAIN]
        stages = select([*named, *again], args.study)
    by_name = {stage.name: stage for stage in ALL_STAGES}
    try:
        if not args.write_only:
            for stage in stages:
                runner.run(stage, by_name.get(stage.init_from))
                write(runner, args.out)  # after every stage, so a stopped chain leaves its tables so far
    except RuntimeError as error:
        print(f"python -m mammut.results: {error}", file=sys.stderr)
        return 1
    finally:
        write(runner, args.out)
    return 0


def write(runner: ChainRunner, out: Path) -> None:
    results = {stage.name: done for stage in ALL_STAGES if (done := runner.result(stage)) is not None}
    out.write_text(results_markdown(list(CHAIN), list(STUDIES), results))


if __name__ == "__main__":
    sys.exit(main())
