"""Compare two runs' logged scalars, value by value: does a change leave training numerically as it was?

    python scripts/compare_runs.py runs/pretrain/version_0 runs/pretrain/version_1 [--tags train/loss val/]

Reads every TensorBoard event file of each run folder and compares the scalars that both runs
logged, at every step, exactly (the float32 values TensorBoard stores). Prints each tag's
number of steps and its first differing step, and exits 1 if any value differs or a tag is
missing from one run. ``--tags`` keeps the tags that start with one of the given prefixes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mammut.run_logs import scalars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tags", nargs="*", default=None, help="tag prefixes to compare (default: all)")
    args = parser.parse_args(argv)
    try:
        before, after = scalars(args.before), scalars(args.after)
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None
    wanted = lambda tag: args.tags is None or any(tag.startswith(p) for p in args.tags)  # noqa: E731
    differ = False
    for tag in sorted(t for t in set(before) | set(after) if wanted(t)):
        if tag not in before or tag not in after:
            print(f"{tag:<48} only in {'after' if tag not in before else 'before'}")
            differ = True
            continue
        steps = sorted(set(before[tag]) | set(after[tag]))
        first = next((s for s in steps if before[tag].get(s) != after[tag].get(s)), None)
        differ |= first is not None
        status = "identical" if first is None else \
            f"differs from step {first}: {before[tag].get(first)!r} vs {after[tag].get(first)!r}"
        print(f"{tag:<48} {len(steps):>5} steps  {status}")
    print("runs differ" if differ else "every compared value is identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
