"""How good pseudo-boxes are, before training on them: precision and recall against true boxes.

    python -m mammut.tasks.detection.pseudo_label_quality runs/selftrain/round1/pseudo_labels/pseudo_labels.json \\
        data/demo/annotations/instances_val.json

A pseudo-box is named by a query ("small red hexagon"); it counts for the true class its object
word names ("hexagon"; a plural "hexagons" too), and queries that name no class ("shapes") are
counted apart. Per class, of the images both files hold: precision is the share of its
pseudo-boxes that overlap a true box of the class at IoU 0.5 or more, recall the share of its true
boxes that such a pseudo-box covers (images the pseudo-labels left out miss all theirs). Novel
classes (LVIS frequency "r") are summed apart from the others.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.ops import box_iou

from mammut.data.caption_queries import head_word
from mammut.data.instances import Category, read_instances
from mammut.data.json_records import load_json, write_json
from mammut.tasks.detection.task import box_corners

IOU = 0.5


@dataclass
class ClassQuality:
    name: str
    novel: bool
    pseudo_boxes: int = 0
    correct: int = 0      # pseudo-boxes on a true box of their class
    true_boxes: int = 0
    found: int = 0        # true boxes under a pseudo-box of their class

    @property
    def precision(self) -> float:
        return self.correct / self.pseudo_boxes if self.pseudo_boxes else float("nan")

    @property
    def recall(self) -> float:
        return self.found / self.true_boxes if self.true_boxes else float("nan")


def named_class(query: str, classes: dict[str, Category]) -> Category | None:
    """The true class a query's object word names, singular or plural; None if none."""
    word = head_word(query)
    return classes.get(word) or (classes.get(word[:-1]) if word.endswith("s") else None)


def pseudo_label_quality(pseudo_file: Path, truth_file: Path) -> tuple[list[ClassQuality], int]:
    """Per true class its quality, and the pseudo-boxes whose query names no class."""
    truth = read_instances(truth_file, truth_file.parent)
    classes = {c.name.replace("_", " "): c for c in truth.categories}
    quality = {c.id: ClassQuality(c.name, c.frequency == "r") for c in truth.categories}
    pseudo = load_json(pseudo_file)
    query_class = {c["id"]: named_class(c["name"], classes) for c in pseudo["categories"]}
    pseudo_images = {image["id"] for image in pseudo["images"]}
    by_image: dict[int, list[dict]] = defaultdict(list)
    for annotation in pseudo["annotations"]:
        by_image[annotation["image_id"]].append(annotation)
    # Every image the detector looked at, those the thresholds left out too (their true boxes are missed).
    looked_at = pseudo_images | set(pseudo.get("info", {}).get("left_out_image_ids", []))
    unnamed = 0
    for record in truth.records:
        if record.image_id not in looked_at:
            continue
        for category in truth.categories:
            true = [box_corners(list(b)) for b, c in zip(record.boxes, record.category_ids) if c == category.id]
            mine = [box_corners(a["bbox"]) for a in by_image.get(record.image_id, [])
                    if (named := query_class[a["category_id"]]) is not None and named.id == category.id]
            entry = quality[category.id]
            entry.true_boxes += len(true)
            entry.pseudo_boxes += len(mine)
            if true and mine:
                overlaps = box_iou(torch.tensor(mine), torch.tensor(true)) >= IOU
                entry.correct += int(overlaps.any(dim=1).sum())
                entry.found += int(overlaps.any(dim=0).sum())
        unnamed += sum(query_class[a["category_id"]] is None for a in by_image.get(record.image_id, []))
    return list(quality.values()), unnamed


def summary(rows: list[ClassQuality]) -> ClassQuality:
    total = ClassQuality("", rows[0].novel if rows else False)
    for row in rows:
        total.pseudo_boxes += row.pseudo_boxes
        total.correct += row.correct
        total.true_boxes += row.true_boxes
        total.found += row.found
    return total


def quality_table(rows: list[ClassQuality], unnamed: int) -> str:
    lines = ["| class | pseudo-boxes | precision | true boxes | recall |", "|---|---|---|---|---|"]
    groups = (("novel", [r for r in rows if r.novel]), ("base", [r for r in rows if not r.novel]))
    for label, group in groups:
        for row in group:
            lines.append(f"| {row.name} ({label}) | {row.pseudo_boxes} | {row.precision:.1%} | {row.true_boxes} | "
                         f"{row.recall:.1%} |")
    for label, group in groups:
        if group:
            total = summary(group)
            lines.append(f"| **{label} classes** | {total.pseudo_boxes} | {total.precision:.1%} | {total.true_boxes} | "
                         f"{total.recall:.1%} |")
    lines.append(f"\npseudo-boxes whose query names no class: {unnamed}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mammut.tasks.detection.pseudo_label_quality",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("pseudo_labels", type=Path, help="an LVIS file of pseudo-boxes (pseudo_labels.json)")
    parser.add_argument("truth", type=Path, help="COCO instances or LVIS file of the same images' true boxes")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    rows, unnamed = pseudo_label_quality(args.pseudo_labels, args.truth)
    print(quality_table(rows, unnamed))
    if args.out:
        write_json(args.out, {"classes": [{**row.__dict__, "precision": row.precision, "recall": row.recall}
                                          for row in rows], "unnamed_query_boxes": unnamed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
