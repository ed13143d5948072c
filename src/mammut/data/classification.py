"""Readers of image classification sets for zero-shot evaluation, in the two layouts they come in.

- An ImageFolder tree, as ImageNet's validation set is usually laid out: ``val/n01440764/*.JPEG``,
  one folder per class. Class ``i`` is the ``i``-th folder in sorted order (torchvision's
  ``ImageFolder`` rule), and line ``i`` of a class-names file names it.
- CLIP_benchmark's WebDataset layout: ``<root>/<split>/{0..N-1}.tar`` holding ``<key>.webp|png|jpg``
  with ``<key>.cls`` (the class index), ``<root>/<split>/nshards.txt`` (N), and beside the splits
  ``classnames.txt`` and ``zeroshot_classification_templates.txt``.

Class names and prompt templates are text files, one per line; a template names the class as
``{c}`` ("a photo of a {c}."), as CLIP_benchmark's files do. ImageNet-1k's class names and the 80
templates of CLIP's ImageNet evaluation ship with mammut (``shipped_list``).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from webdataset.tariterators import base_plus_ext

from mammut.data.errors import DataFormatError

# Image extensions of an ImageFolder tree (torchvision's list, lower-cased) and of CLIP_benchmark's tars.
FOLDER_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
WDS_IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")

# Lists shipped in mammut/data/zero_shot/: a name here stands for "<name>_classnames.txt" or
# "<name>_templates.txt" there.
SHIPPED = ("imagenet1k",)


@dataclass(frozen=True)
class ClassifiedImage:
    """One image of a classification set: a file, or a sample of a tar shard."""

    source: str  # the image file, or the tar shard
    label: int
    key: str = ""  # the sample's key inside the shard; empty for a file

    @property
    def name(self) -> str:
        """How messages name the image."""
        return f"{self.source}: sample {self.key!r}" if self.key else self.source


@dataclass(frozen=True)
class ClassificationSet:
    """A classification set as read: its images (or shards), class names and templates."""

    images: list[ClassifiedImage]
    classnames: list[str]
    templates: list[str]
    shards: list[str]  # the tar shards, in order; empty for an ImageFolder tree
    source: Path  # the folder it was read from, for messages


def shipped_list(name: str, kind: str) -> Path:
    """The file of a shipped list: ``kind`` is "classnames" or "templates"."""
    return Path(str(resources.files("mammut.data").joinpath("zero_shot", f"{name}_{kind}.txt")))


def resolve_list(value: str, kind: str, root: Path) -> Path:
    """A class-names or templates setting: the name of a shipped list, or a path (relative to ``root``)."""
    if value in SHIPPED:
        return shipped_list(value, kind)
    path = root / value
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {kind} file (or give a shipped list: {', '.join(SHIPPED)})")
    return path


def read_lines(path: Path, kind: str) -> list[str]:
    """The non-empty lines of a class-names or templates file, stripped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path}: not UTF-8 text ({error})") from error
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:  # a gap would shift every later class name onto the wrong class
        raise DataFormatError(f"{path}: line {lines.index('') + 1} is empty; one {kind[:-1]} per line")
    if not lines:
        raise DataFormatError(f"{path}: no {kind} in it")
    return lines


def read_templates(path: Path) -> list[str]:
    """Prompt templates, each naming the class exactly once as ``{c}``."""
    templates = read_lines(path, "templates")
    for number, template in enumerate(templates, 1):
        try:
            filled = template.format(c="\0")
        except (KeyError, IndexError, ValueError) as error:
            raise DataFormatError(f"{path}: line {number} {template!r}: a template may hold only {{c}} "
                                  f"(write a literal brace as {{{{ or }}}}): {error!r}") from error
        if filled.count("\0") != 1:
            raise DataFormatError(f"{path}: line {number} {template!r} must name the class once, as {{c}}")
    return templates


def read_image_folder(folder: Path, classnames_file: Path, templates_file: Path) -> ClassificationSet:
    """An ImageFolder tree: one folder per class, class ``i`` the ``i``-th in sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of class folders")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataFormatError(f"{folder}: no class folders in it (expected e.g. {folder}/n01440764/*.JPEG)")
    classnames = read_lines(classnames_file, "classnames")
    if len(classnames) != len(classes):
        raise DataFormatError(f"{classnames_file}: {len(classnames)} class names, but {folder} has {len(classes)} "
                              f"class folders ({classes[0].name} ... {classes[-1].name}); line i names the i-th "
                              "folder in sorted order")
    images = [ClassifiedImage(str(path), label)
              for label, class_folder in enumerate(classes)
              for path in sorted(class_folder.iterdir())
              if path.is_file() and path.suffix.lower() in FOLDER_IMAGE_EXTENSIONS]
    if not images:
        raise DataFormatError(f"{folder}: no images in its class folders")
    return ClassificationSet(images, classnames, read_templates(templates_file), [], folder)


def is_wds_root(path: Path, split: str) -> bool:
    return (Path(path) / split / "nshards.txt").is_file()


def read_wds(root: Path, split: str, classnames_file: Path | None = None,
             templates_file: Path | None = None) -> ClassificationSet:
    """CLIP_benchmark's WebDataset layout. The shards' members are listed (headers only, nothing
    decoded) to count and label the samples, so that every rank is given its share up front."""
    root = Path(root)
    count_file = root / split / "nshards.txt"
    try:
        num_shards = int(count_file.read_text().strip())
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{count_file}: missing; a CLIP_benchmark WebDataset root holds "
                                f"<split>/nshards.txt and <split>/0.tar ...") from error
    except ValueError as error:
        raise DataFormatError(f"{count_file}: not a number of shards ({error})") from error
    dataset_type = root / "dataset_type.txt"
    if dataset_type.is_file() and dataset_type.read_text().strip().lower() != "classification":
        raise DataFormatError(f"{dataset_type}: says {dataset_type.read_text().strip()!r}; zero-shot classification "
                              "reads classification sets (.cls labels)")
    classnames = read_lines(classnames_file or root / "classnames.txt", "classnames")
    templates = read_templates(templates_file or root / "zeroshot_classification_templates.txt")
    shards = [str(root / split / f"{n}.tar") for n in range(num_shards)]
    images = [image for shard in shards for image in _labelled_samples(shard, len(classnames))]
    if not images:
        raise DataFormatError(f"{root / split}: no samples in its {num_shards} shards")
    return ClassificationSet(images, classnames, templates, shards, root)


def _labelled_samples(shard: str, num_classes: int) -> list[ClassifiedImage]:
    """Each sample of a shard that has an image, with its label from its ``.cls`` member."""
    labels: dict[str, int] = {}
    with_image: dict[str, None] = {}  # keys in the order of their first image, as webdataset groups them
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                key, extension = base_plus_ext(member.name)
                if key is None:
                    continue
                if extension == "cls":
                    text = tar.extractfile(member).read().decode("utf-8", "replace").strip()
                    try:
                        labels[key] = int(text)
                    except ValueError as error:
                        raise DataFormatError(f"{shard}: sample {key!r}: .cls holds {text!r}, not a class index") \
                            from error
                elif extension in WDS_IMAGE_EXTENSIONS:  # as CLIP_benchmark reads them, lower case
                    with_image.setdefault(key)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{shard}: shard missing (nshards.txt counts it)") from error
    except tarfile.TarError as error:
        raise DataFormatError(f"{shard}: unreadable tar ({error})") from error
    images = []
    for key in with_image:
        if key not in labels:
            raise DataFormatError(f"{shard}: sample {key!r} has an image but no .cls label")
        if not 0 <= labels[key] < num_classes:
            raise DataFormatError(f"{shard}: sample {key!r}: class {labels[key]} is outside the "
                                  f"{num_classes} class names")
        images.append(ClassifiedImage(shard, labels[key], key))
    return images


@dataclass
class ZeroShotSet:
    """Where a zero-shot classification set is, as a config names it (``data.val_zeroshot``)."""

    path: str  # an ImageFolder tree, or a CLIP_benchmark WebDataset root; relative to the data root
    # A class-names file, or a shipped list ("imagenet1k"); a WebDataset root's own classnames.txt by default.
    classnames: str | None = None
    # A templates file, or a shipped list ("imagenet1k", CLIP's 80 ImageNet prompts); a WebDataset
    # root's own zeroshot_classification_templates.txt by default.
    templates: str | None = None
    split: str = "test"  # a WebDataset root's split folder


def read_classification_set(spec: ZeroShotSet, root: Path, name: str) -> ClassificationSet:
    """The set ``spec`` describes: CLIP_benchmark's WebDataset layout when ``<path>/<split>/nshards.txt``
    exists, an ImageFolder tree otherwise."""
    path = Path(root) / spec.path
    lists = {kind: resolve_list(value, kind, Path(root)) if value is not None else None
             for kind, value in (("classnames", spec.classnames), ("templates", spec.templates))}
    if is_wds_root(path, spec.split):
        return read_wds(path, spec.split, lists["classnames"], lists["templates"])
    missing = [kind for kind, file in lists.items() if file is None]
    if missing:
        raise ValueError(f"zero-shot set {name!r}: {path} is read as an ImageFolder tree (it has no "
                         f"{spec.split}/nshards.txt), which needs {' and '.join(missing)} set to a file or a "
                         f"shipped list ({', '.join(SHIPPED)})")
    return read_image_folder(path, lists["classnames"], lists["templates"])
