"""The demo world: a small synthetic dataset in real public formats.

`python -m mammut.data.demo --out data/demo` (or `generate(out_dir)`) writes
coloured shapes on low-contrast backgrounds as JPEGs, with COCO captions, VQAv2
questions and COCO/LVIS instances, so every reader, metric and task runs on a
fresh machine with no downloads, and unchanged on the real datasets.

Layout under the output root (`file_name` entries are bare names inside `images/{split}/`):

    images/{split}/{image_id:012d}.jpg
    annotations/captions_{split}.json
    annotations/instances_{split}.json
    vqa/v2_OpenEnded_mscoco_{split}_questions.json
    vqa/v2_mscoco_{split}_annotations.json
    manifest.json
    classification/{val,test}/<colour>_<shape>/*.jpg   zero-shot classification (ImageFolder), with
        classnames.txt, zeroshot_classification_templates.txt and info.json (`classification`)

Modules, one job each: `world` (vocabulary), `geometry` (shape outlines), `scene`
(sampling), `render` (pixels), `captions`, `vqa`, `detection` (per-scene content),
`split` (unique scenes per split), `formats` (public JSON layouts), `layout`
(paths), `writer` (deterministic files), `generate` (the whole run).

Video clips are their own media with their own sampler (objects that move, change
colour, grow); they belong in sibling modules and a "video" entry in `TASKS`,
leaving the image pipeline as it is.
"""

from .generate import DEFAULT_SIZES, TASKS, TINY_SIZES, generate
from .world import NOVEL_SHAPES, SHAPES, SPLITS
from .writer import GENERATOR_VERSION

__all__ = [
    "DEFAULT_SIZES",
    "GENERATOR_VERSION",
    "NOVEL_SHAPES",
    "SHAPES",
    "SPLITS",
    "TASKS",
    "TINY_SIZES",
    "generate",
]
