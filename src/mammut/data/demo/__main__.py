"""Command line: `python -m mammut.data.demo [--out data/demo] [--seed 0] [--tiny] ...`."""

import argparse
import time

from .generate import DEFAULT_CLIP_SIZES, DEFAULT_SIZES, TASKS, TINY_CLIP_SIZES, TINY_SIZES, generate
from .world import SPLITS


def _task_list(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split() if t]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mammut.data.demo",
        description="Write the synthetic demo world (JPEGs + COCO captions, VQAv2, COCO/LVIS instances).",
    )
    parser.add_argument("--out", default="data/demo", help="output root (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: 0)")
    for split in SPLITS:
        parser.add_argument(
            f"--{split}",
            type=int,
            default=None,
            help=f"images in the {split} split (default {DEFAULT_SIZES[split]}, {TINY_SIZES[split]} with --tiny)",
        )
    for split in SPLITS:
        parser.add_argument(
            f"--{split}-clips",
            type=int,
            default=None,
            help=f"video clips in the {split} split (default {DEFAULT_CLIP_SIZES[split]}, "
            f"{TINY_CLIP_SIZES[split]} with --tiny)",
        )
    parser.add_argument("--tiny", action="store_true", help="a few dozen images per split, for tests")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default: 64)")
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=list(TASKS),
        help=f"tasks to write, from {', '.join(TASKS)}; captions are always written (default: all)",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes drawing images (default: 2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sizes = {split: getattr(args, split) for split in SPLITS if getattr(args, split) is not None}
    clip_sizes = {split: getattr(args, f"{split}_clips") for split in SPLITS if getattr(args, f"{split}_clips") is not None}
    tasks = [t for text in args.tasks for t in _task_list(text)]
    start = time.perf_counter()
    try:
        manifest = generate(
            args.out,
            seed=args.seed,
            sizes=sizes,
            image_size=args.image_size,
            tasks=tasks,
            tiny=args.tiny,
            workers=args.workers,
            clip_sizes=clip_sizes,
        )
    except ValueError as error:  # bad arguments: a usage message, not a traceback
        parser.error(str(error))
    elapsed = time.perf_counter() - start
    counts = ", ".join(f"{split} {n}" for split, n in manifest["sizes"].items())
    counts += " images"
    if "video" in manifest["tasks"]:
        counts += "; " + ", ".join(f"{split} {n}" for split, n in manifest["clip_sizes"].items()) + " clips"
    print(f"demo world in {args.out}: {counts}; tasks {', '.join(manifest['tasks'])}; {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
