"""Pretraining sources with the flaws of web data, beside the demo world's clean captions.

Web pretraining data mixes sources of unequal worth. Two such sources are written here, in the
demo's own formats (COCO captions JSON and JPEG folders), to pretrain on beside the clean
training split (``configs/pretrain_mixture.yaml``), and a held-out target set to weigh them by:

- ``sources/noisy``: alt-text. One caption per image, as a web page gives; for ``noisy_share``
  of the images (40%) the caption is another image's, and ``cut_share`` of the others (20%) are
  cut short after a few words, as alt-text often is.
- ``sources/redundant``: many near-duplicates of a few easy scenes, one large object each: the
  same scene drawn again with other background noise, colour jitter and a pixel or two of
  shift, each copy with a caption of its own phrasing. It is learned early and then teaches
  nothing.
- ``sources/target``: a small held-out set drawn as the clean training split is (one caption
  each), never trained on: the set that ``rule: target_gain`` weighs the sources by, standing
  for the curated data a user trusts (docs/adaptive-mixing.md).

Their scenes come from their own random streams (seed, "noisy" / "redundant" / "target"), so writing them
changes no other file of the demo world:

    python -m mammut.data.demo.web_sources --out data/demo     # make data-sources
    python -m mammut.data.write_shards --captions data/demo/sources/noisy/captions.json \\
        --images data/demo/sources/noisy/images --out data/demo/shards/noisy \\
        --first-shard 100    # the same as tar shards, numbered apart (configs/pretrain_shards_mixture.yaml)
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import random
from pathlib import Path

import numpy as np

from ..json_records import write_json
from .captions import draw_caption
from .generate import RENDER_CHUNK, _render_to_file
from .layout import add_world_arguments, world_settings
from .scene import Scene, sample_scene, single_object_scene
from .split import split_rng
from .world import COLOURS, SHAPES
from .writer import GENERATOR_VERSION

NOISY_IMAGES, REDUNDANT_IMAGES, REDUNDANT_SCENES, TARGET_IMAGES = 20_000, 10_000, 20, 512
TINY = {"noisy_images": 48, "redundant_images": 48, "redundant_scenes": 4, "target_images": 32}
NOISY_SHARE, CUT_SHARE = 0.4, 0.2
MIN_CUT_WORDS = 2
# Image ids apart from the splits' (train from 1, val from 10 000 001, test from 20 000 001).
ID_OFFSET = {"noisy": 30_000_000, "redundant": 40_000_000, "target": 50_000_000}
SHIFT_PIXELS = 1.5  # the largest shift of a near-duplicate's object


def sources_dir(root: Path) -> Path:
    return Path(root) / "sources"


def noisy_pairs(scenes: list[Scene], rng: random.Random, noisy_share: float, cut_share: float) -> list[dict]:
    """One alt-text per scene: its own caption, another scene's (``noisy_share``), or its own cut short."""
    own = [draw_caption(scene, rng, complete=False) for scene in scenes]
    pairs = []
    for index, caption in enumerate(own):
        if rng.random() < noisy_share and len(scenes) > 1:
            other = rng.randrange(len(scenes) - 1)
            pairs.append({"caption": own[other + (other >= index)], "kind": "other image"})
        elif rng.random() < cut_share and len(words := caption.split()) > MIN_CUT_WORDS:
            pairs.append({"caption": " ".join(words[:rng.randint(MIN_CUT_WORDS, len(words) - 1)]), "kind": "cut"})
        else:
            pairs.append({"caption": caption, "kind": "clean"})
    return pairs


def near_duplicates(rng: random.Random, image_size: int, scenes: int, images: int) -> list[Scene]:
    """``images`` scenes: ``scenes`` easy ones (a large object), each copied with a small shift."""
    colours = sorted(COLOURS)
    originals = [single_object_scene(rng, rng.choice(SHAPES), rng.choice(colours), "large", image_size)
                 for _ in range(scenes)]
    copies = []
    for index in range(images):
        scene = originals[index % scenes]
        obj = scene.objects[0]
        shifted = dataclasses.replace(obj, cx=obj.cx + rng.uniform(-SHIFT_PIXELS, SHIFT_PIXELS),
                                      cy=obj.cy + rng.uniform(-SHIFT_PIXELS, SHIFT_PIXELS))
        copies.append(dataclasses.replace(scene, objects=(shifted,)))
    return copies


def _captions_document(name: str, scenes: list[Scene], captions: list[str], kinds: list[str], seed: int,
                       image_size: int, description: str) -> dict:
    first = ID_OFFSET[name] + 1
    return {
        "info": {"description": description, "generator": "mammut.data.demo.web_sources",
                 "generator_version": GENERATOR_VERSION, "seed": seed, "image_size": image_size},
        "licenses": [],
        "images": [{"id": first + i, "file_name": f"{first + i:012d}.jpg", "width": image_size, "height": image_size,
                    "pair": kind} for i, kind in enumerate(kinds)],
        "annotations": [{"id": (first + i) * 10, "image_id": first + i, "caption": caption}
                        for i, caption in enumerate(captions)],
    }


def write_web_sources(root: Path, seed: int, image_size: int, noisy_images: int = NOISY_IMAGES,
                      redundant_images: int = REDUNDANT_IMAGES, redundant_scenes: int = REDUNDANT_SCENES,
                      target_images: int = TARGET_IMAGES, noisy_share: float = NOISY_SHARE,
                      cut_share: float = CUT_SHARE, workers: int | None = None) -> dict:
    """Write the sources and the target set under ``root/sources``; return their info (also
    written as ``sources/info.json``)."""
    if not 0 <= noisy_share <= 1 or not 0 <= cut_share <= 1:
        raise ValueError(f"the noisy and cut shares are fractions, got {noisy_share} and {cut_share}")
    if not 0 < redundant_scenes <= redundant_images:
        raise ValueError(f"need 0 < redundant scenes ({redundant_scenes}) <= redundant images ({redundant_images})")
    folder = sources_dir(root)
    rng = split_rng(seed, "train", "noisy")
    noisy_scenes = [sample_scene(rng, image_size) for _ in range(noisy_images)]
    pairs = noisy_pairs(noisy_scenes, rng, noisy_share, cut_share)
    rng = split_rng(seed, "train", "redundant")
    redundant = near_duplicates(rng, image_size, redundant_scenes, redundant_images)
    rng_target = split_rng(seed, "train", "target")
    target = [sample_scene(rng_target, image_size) for _ in range(target_images)]
    documents = {
        "noisy": (noisy_scenes, [p["caption"] for p in pairs], [p["kind"] for p in pairs],
                  f"mammut demo world: alt-text ({noisy_share:.0%} of another image, {cut_share:.0%} of the rest cut)"),
        "redundant": (redundant, [draw_caption(scene, rng, complete=False) for scene in redundant],
                      ["near duplicate"] * len(redundant),
                      f"mammut demo world: {redundant_images} near-duplicates of {redundant_scenes} scenes"),
        "target": (target, [draw_caption(scene, rng_target, complete=False) for scene in target],
                   ["clean"] * len(target), f"mammut demo world: {target_images} held-out clean pairs (a target set)"),
    }
    jobs = []
    for name, (scenes, captions, kinds, description) in documents.items():
        images = folder / name / "images"
        images.mkdir(parents=True, exist_ok=True)
        document = _captions_document(name, scenes, captions, kinds, seed, image_size, description)
        write_json(folder / name / "captions.json", document)
        # The entropy's third field tells these from the splits' images (0, 1, 2).
        jobs += [(str(images / entry["file_name"]), scene, (seed, 3 + list(ID_OFFSET).index(name), i))
                 for i, (entry, scene) in enumerate(zip(document["images"], scenes))]
        written = {entry["file_name"] for entry in document["images"]}
        for stale in images.glob("*.jpg"):  # left by an earlier, larger run
            if stale.name not in written:
                stale.unlink()
    workers = workers or min(2, multiprocessing.cpu_count())
    if workers > 1 and len(jobs) >= RENDER_CHUNK:
        with multiprocessing.get_context().Pool(workers) as pool:
            pool.map(_render_to_file, jobs, chunksize=RENDER_CHUNK)
    else:
        for job in jobs:
            _render_to_file(job)
    info = {"generator": "mammut.data.demo.web_sources", "generator_version": GENERATOR_VERSION, "seed": seed,
            "image_size": image_size, "noisy": {"images": noisy_images, "noisy_share": noisy_share,
                                                "cut_share": cut_share,
                                                "pairs": {k: sum(p["kind"] == k for p in pairs)
                                                          for k in ("clean", "other image", "cut")}},
            "redundant": {"images": redundant_images, "scenes": redundant_scenes}, "target": {"images": target_images}}
    write_json(folder / "info.json", info)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mammut.data.demo.web_sources",
                                     description="Write pretraining sources with the flaws of web data.")
    add_world_arguments(parser)
    parser.add_argument("--noisy-share", type=float, default=NOISY_SHARE,
                        help="share of alt-texts that belong to another image (default: %(default)s)")
    parser.add_argument("--cut-share", type=float, default=CUT_SHARE,
                        help="share of the other alt-texts cut short (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help=f"a few images each ({TINY})")
    args = parser.parse_args(argv)
    seed, image_size = world_settings(args)
    sizes = TINY if args.tiny else {}
    info = write_web_sources(Path(args.out), seed, image_size, noisy_share=args.noisy_share,
                             cut_share=args.cut_share, **sizes)
    print(f"sources in {sources_dir(Path(args.out))}: noisy {info['noisy']['pairs']}, redundant "
          f"{info['redundant']['images']} images of {info['redundant']['scenes']} scenes, target "
          f"{info['target']['images']} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
