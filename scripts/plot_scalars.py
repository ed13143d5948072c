"""Draw logged scalars of a run as one SVG line chart, for the docs (no plotting library needed).

    python scripts/plot_scalars.py runs/mixture/adaptive/version_0 --tags 'train/sources/*/weight' \
        --out docs/adaptive-mixing-weights.svg --title "source weights, adaptive mixing"

Each tag matching one of the ``--tags`` patterns (shell-style, ``*`` matching within a tag) is a
line over the steps, labelled by the part of the tag that ``*`` matched.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
from pathlib import Path
from xml.sax.saxutils import escape

from mammut.run_logs import scalars

WIDTH, HEIGHT, MARGIN = 640, 320, 48
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def label(pattern: str, tag: str) -> str:
    """What the pattern's wildcards matched in ``tag`` (the whole tag if nothing)."""
    match = re.fullmatch(fnmatch.translate(pattern).replace(".*", "(.*)"), tag)
    return "/".join(match.groups()) if match and match.groups() else tag


def svg_chart(lines: dict[str, dict[int, float]], title: str) -> str:
    points = [(s, v) for values in lines.values() for s, v in values.items()]
    if not points:
        raise ValueError("no values to draw")
    x_max = max(s for s, _ in points) or 1
    y_min, y_max = min(0.0, min(v for _, v in points)), max(v for _, v in points) or 1.0
    x = lambda step: MARGIN + (WIDTH - 2 * MARGIN) * step / x_max  # noqa: E731
    y = lambda value: HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * (value - y_min) / (y_max - y_min)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
             'font-size="12"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{WIDTH / 2}" y="20" text-anchor="middle">{escape(title)}</text>',
             f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" y2="{HEIGHT - MARGIN}" stroke="black"/>',
             f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{HEIGHT - MARGIN}" stroke="black"/>',
             f'<text x="{WIDTH / 2}" y="{HEIGHT - 12}" text-anchor="middle">step</text>']
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        step, value = x_max * fraction, y_min + (y_max - y_min) * fraction
        parts.append(f'<text x="{x(step):.1f}" y="{HEIGHT - MARGIN + 16}" text-anchor="middle">{step:.0f}</text>')
        parts.append(f'<text x="{MARGIN - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.2f}</text>')
    for index, (name, values) in enumerate(lines.items()):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in sorted(values.items()))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        parts.append(f'<text x="{WIDTH - MARGIN - 4}" y="{MARGIN + 16 * index}" text-anchor="end" fill="{colour}">'
                     f"{escape(name)}</text>")
    return "\n".join(parts + ["</svg>"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--tags", nargs="+", required=True, help="shell-style patterns of the tags to draw")
    parser.add_argument("--out", type=Path, required=True, help="the .svg file to write")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    logged = scalars(args.run)
    lines = {label(pattern, tag): logged[tag] for pattern in args.tags for tag in sorted(logged)
             if fnmatch.fnmatchcase(tag, pattern)}
    if not lines:
        raise SystemExit(f"{args.run}: no tag matches {args.tags}; it logged {sorted(logged)[:10]} ...")
    args.out.write_text(svg_chart(lines, args.title or ", ".join(args.tags)))
    print(f"wrote {args.out}: {', '.join(lines)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
