"""Do generated captions name the right shapes and colours? A check on the demo world's val split.

    python bench/demo_captions.py --checkpoint runs/pretrain/version_0/checkpoints/last.ckpt

Each val image of the demo world stores its objects ("large red circle; small blue square | ...").
A generated caption is parsed for "<colour> [size] <shape>" mentions, and the table reports, over
the images: how often every colour-shape pair the caption names is in the image (and it names at
least one), how often it names all of the image's objects, and how often its first mention is right.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mammut.data import CaptionDataset, CaptionTokenizer, collate_eval, image_transform, read_coco_captions
from mammut.data.demo.world import COLOURS, SHAPES, SIZES, plural
from mammut.model import generate
from mammut.tasks.pretrain import PretrainModule
from report import markdown_table, publish

SIZE_WORDS = "|".join((*SIZES, "big", "little", "tiny"))
MENTION = re.compile(rf"\b({'|'.join(COLOURS)})\s+(?:(?:{SIZE_WORDS})\s+)?({'|'.join(SHAPES)})\b")


def objects_of(canonical: str) -> set[tuple[str, str]]:
    """{(colour, shape)} from "large red circle; small blue square | relations"."""
    objects = canonical.split(" | ")[0].split("; ")
    return {tuple(obj.split()[1:3]) for obj in objects}


def mentions(caption: str) -> list[tuple[str, str]]:
    return MENTION.findall(caption.lower())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--examples", type=int, default=8, help="captions printed with their images' objects")
    args = parser.parse_args()

    root = Path(args.data)
    module = PretrainModule.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    tokenizer = CaptionTokenizer.from_file(root / "tokenizer.json")
    annotations = root / "annotations/captions_val.json"
    canonical = {image["id"]: image["canonical"] for image in json.loads(annotations.read_text())["images"]}
    records, _ = read_coco_captions(annotations, root / "images/val")
    config = module.architecture
    dataset = CaptionDataset(records, tokenizer, image_transform(config.image_size, train=False),
                             config.context_length, train=False)
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate_eval)

    counts = {"names only objects in the image": 0, "names every object": 0, "first mention right": 0}
    examples, total = [], 0
    with torch.no_grad():
        for batch in loader:
            captions = tokenizer.decode_batch(generate(module.model, module.model.encode_image(batch.images),
                                                       config=module.generation))
            for image_id, caption in zip(batch.image_ids.tolist(), captions):
                truth, named = objects_of(canonical[image_id]), mentions(caption)
                total += 1
                counts["names only objects in the image"] += bool(named) and set(named) <= truth
                counts["names every object"] += truth <= set(named)
                counts["first mention right"] += bool(named) and named[0] in truth
                if len(examples) < args.examples:
                    examples.append([caption, canonical[image_id].split(" | ")[0]])
    rows = [[name, f"{100 * value / total:.1f}%"] for name, value in counts.items()]
    body = (markdown_table(["generated captions on the demo val split", f"of {total} images"], rows)
            + "\n\n" + markdown_table(["generated caption", "objects in the image"], examples)
            + f"\n\nCheckpoint `{args.checkpoint}`; decoding {module.generation}. Shapes: "
            + ", ".join(plural(s) for s in SHAPES) + ".")
    publish("Demo world: do captions name the right objects?", body)


if __name__ == "__main__":
    main()
