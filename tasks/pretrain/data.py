"""Image-caption pairs for pretraining, in COCO captions or Karpathy format, and the zero-shot
classification sets its evaluations score."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from mammut.data import CaptionDataset, CaptionRecord, collate_eval, collate_train, image_transform, read_captions
from mammut.data.classification import ClassificationSet, ZeroShotSet, read_classification_set
from mammut.data.classification_dataset import ClassificationStream, GatedLoader, collate_classification
from mammut.data.images import load_rgb_image
from mammut.data.source_mixing import SourceMixer
from mammut.data.sources import TargetSet, TrainSource, plain_sources, plain_target
from mammut.learning_progress import MIXINGS, LearningProgressSettings, LearningProgressWeights
from mammut.tasks.datamodule import SPLITS_READ, TaskDataModule
from mammut.tasks.pretrain.task import CaptionInputs, caption_inputs
from mammut.tasks.pretrain.zero_shot import ZeroShotClasses

log = logging.getLogger(__name__)

SET_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a zero-shot set's name keys its metrics


class ImageTextDataModule(TaskDataModule):
    """Image-caption pairs in COCO captions format: the demo world, COCO, or your own files."""

    dataset_class = CaptionDataset
    collate_train, collate_eval = staticmethod(collate_train), staticmethod(collate_eval)

    def __init__(
        self,
        train_annotations: str = "annotations/captions_train.json",
        train_images: str = "images/train",
        val_annotations: str = "annotations/captions_val.json",
        val_images: str = "images/val",
        test_annotations: str | None = "annotations/captions_test.json",
        test_images: str | None = "images/test",
        annotation_format: str = "auto",
        predict_images: list[str] | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 250,
        val_zeroshot: dict[str, ZeroShotSet] | None = None,
        test_zeroshot: dict[str, ZeroShotSet] | None = None,
        zeroshot_every_n_steps: int | None = None,
        train_sources: dict[str, TrainSource] | None = None,
        mixing: str = "fixed",
        adaptive: LearningProgressSettings | None = None,
        adaptive_target: TargetSet | None = None,
        steps_per_epoch: int | None = None,
        **kwargs,
    ):
        """
        Args:
            train_annotations: caption JSON of the training split (see ``annotation_format``),
                relative to ``root``; ``*_images`` are image folders.
            annotation_format: "coco" (a captions file per split), "karpathy" (one
                ``dataset_coco.json``-style file of every split, read for the split's images:
                train = "train" + "restval"), or "auto" to tell them apart by content.
            predict_images: image files to caption with ``mammut predict``.
            batch_size: training images per step and device. The contrastive batch is the
                batch of all devices together (embeddings are gathered); with
                ``trainer.accumulate_grad_batches`` it is still one step's, not the accumulated one.
            eval_batch_size: images per validation step.
            val_zeroshot: name -> a zero-shot classification set (``mammut.data.classification.ZeroShotSet``:
                an ImageFolder tree or a CLIP_benchmark WebDataset root, with class names and prompt
                templates) scored at validation: top-1, top-5 and mean per-class recall beside chance,
                as ``val/pretrain/zeroshot/<name>/top1``. With ``val_annotations: null`` validation
                is zero-shot classification alone.
            test_zeroshot: the same for ``mammut test``.
            zeroshot_every_n_steps: in ``fit``, classify only at the validations whose step is a
                multiple of this (None: at every validation); ``validate`` and ``test`` always do.
            train_sources: name -> a source of training pairs (``mammut.data.sources.TrainSource``:
                annotations, images, starting weight), instead of ``train_annotations`` and
                ``train_images``; each training batch is drawn from one source
                (``mammut.data.source_mixing``), and each source's weight and loss are logged.
            mixing: with ``train_sources``: ``fixed`` draws the sources by their weights;
                ``adaptive`` moves the weights by the rule of ``adaptive``: towards the sources
                whose steps help a target set most, or whose loss still falls
                (``mammut.learning_progress``; docs/adaptive-mixing.md).
            adaptive: the adaptive rule's settings (``LearningProgressSettings``: floor,
                temperature, decays, warmup, signal, rule, probe_every).
            adaptive_target: with ``adaptive.rule: target_gain``, the held-out caption set
                (``mammut.data.sources.TargetSet``, a COCO captions file) whose loss each source's steps are credited
                with lowering; its first ``size`` images per rank, one caption each, never trained on.
            steps_per_epoch: with ``train_sources``, training steps per epoch (default: the
                sources' batches together).
            **kwargs: those of ``TaskDataModule``: root, tokenizer, image_size, context_length,
                num_workers, skip_bad_samples, seed.
        """
        super().__init__(**kwargs)
        # Saved as plain data, which a checkpoint loads without unpickling any class.
        val_zeroshot, test_zeroshot = _plain(val_zeroshot), _plain(test_zeroshot)
        train_sources, adaptive_target = plain_sources(train_sources), plain_target(adaptive_target)
        adaptive = dataclasses.asdict(adaptive) if dataclasses.is_dataclass(adaptive) else adaptive
        self.save_arguments(locals())
        if mixing not in MIXINGS:
            raise ValueError(f"data.mixing must be one of {MIXINGS}, got {mixing!r}")
        if mixing == "adaptive" and not train_sources:
            raise ValueError("data.mixing=adaptive weighs data.train_sources, and none are set")
        self.mixing_settings = LearningProgressSettings(**(adaptive or {}))
        self.check_adaptive_target(mixing)
        self.source_records: dict[str, list[CaptionRecord]] = {}
        self.mixer: SourceMixer | None = None
        for split, sets in (("val", val_zeroshot), ("test", test_zeroshot)):
            for name in sets or {}:
                if not SET_NAME.fullmatch(name):
                    raise ValueError(f"data.{split}_zeroshot: the set name {name!r} may hold only letters, digits, "
                                     "'_' and '-' (it names the set's metrics)")
        if zeroshot_every_n_steps is not None and zeroshot_every_n_steps < 1:
            raise ValueError(f"data.zeroshot_every_n_steps must be positive or null, got {zeroshot_every_n_steps}")
        self.zero_shot_sets: dict[str, dict[str, ClassificationSet]] = {}  # split -> name -> the set read

    def setup(self, stage: str) -> None:
        h = self.hparams
        evaluated = {"fit": "val", "validate": "val", "test": "test"}.get(stage)
        for split in SPLITS_READ[stage]:
            if split != "train" and h[f"{split}_annotations"] is None:
                continue  # zero-shot classification alone: no captions to evaluate,
            if split == "train" and stage != "fit" and h[f"{evaluated}_annotations"] is None:
                continue  # nor a captioning baseline to take from the training captions
            self.read_records(split)
        self.read_zero_shot_sets(stage)

    def read_zero_shot_sets(self, stage: str) -> None:
        """Read the zero-shot classification sets that ``stage`` evaluates, once."""
        split = {"fit": "val", "validate": "val", "test": "test"}.get(stage)
        if split is None or split in self.zero_shot_sets:
            return
        if not self.num_eval_loaders(split):
            raise ValueError(f"nothing to evaluate: data.{split}_annotations and data.{split}_zeroshot are both unset")
        sets = {}
        for name, spec in (self.hparams[f"{split}_zeroshot"] or {}).items():
            try:
                sets[name] = read_classification_set(ZeroShotSet(**spec), self.root, name)
            except FileNotFoundError as error:
                raise FileNotFoundError(f"data.{split}_zeroshot, set {name!r}: {error} (configs/pretrain.yaml names "
                                        f"the demo's; with other data, name yours or set data.{split}_zeroshot=null)") \
                    from error
        self.zero_shot_sets[split] = sets

    def num_eval_loaders(self, split: str) -> int:
        """Evaluation loaders of a split: the captions', then one per zero-shot set."""
        h = self.hparams
        return int(h[f"{split}_annotations"] is not None) + len(h[f"{split}_zeroshot"] or {})

    def read_split(self, split: str) -> tuple[list[CaptionRecord], int, Path]:
        h = self.hparams
        if split == "train" and h.train_sources:
            return self._read_sources()
        annotations, images = h[f"{split}_annotations"], h[f"{split}_images"]
        if annotations is None:
            raise ValueError(f"data.{split}_annotations is not set")
        records, skipped = read_captions(self.path(annotations), self.path(images), split, h.skip_bad_samples,
                                         h.annotation_format)
        return records, skipped, self.path(annotations)

    def _read_sources(self) -> tuple[list[CaptionRecord], int, Path]:
        """Every source's records; the training split (for the captioning baseline) is all of them."""
        h, skipped = self.hparams, 0
        for name, source in h.train_sources.items():
            records, dropped = read_captions(self.path(source["annotations"]), self.path(source["images"]), "train",
                                             h.skip_bad_samples, h.annotation_format)
            if dropped:
                log.warning("source %s (%s): skipped %d bad records", name, source["annotations"], dropped)
            if not records:
                raise ValueError(f"source {name} ({self.path(source['annotations'])}): no usable records")
            self.source_records[name], skipped = records, skipped + dropped
        return [r for records in self.source_records.values() for r in records], skipped, self.root

    def train_dataloader(self):
        """One loader, or with ``train_sources`` a ``SourceMixer`` over a loader per source."""
        h = self.hparams
        if not h.train_sources:
            return super().train_dataloader()
        self.read_records("train")
        loaders = {name: self.train_loader(self.dataset_of(records, train=True), self.collate_train)
                   for name, records in self.source_records.items()}
        return self.source_mixer(loaders, {name: s["weight"] for name, s in h.train_sources.items()},
                                 adaptive=h.mixing == "adaptive", steps_per_epoch=h.steps_per_epoch,
                                 layout=(self.data_parallel_rank()[1], max(h.num_workers, 1)))

    def check_adaptive_target(self, mixing: str) -> None:
        if mixing == "adaptive" and self.mixing_settings.rule == "target_gain" and not self.hparams.adaptive_target:
            raise ValueError("data.adaptive.rule=target_gain credits each source with its steps' gain on a target "
                             "set: name one in data.adaptive_target (annotations, images)")

    def source_mixer(self, loaders: dict[str, DataLoader], priors: dict[str, float], adaptive: bool,
                     steps_per_epoch: int | None, layout: tuple[int, int]) -> SourceMixer:
        """The mixer over the sources' loaders, continuing where the last one was (Lightning reloads
        loaders), with the target batch of ``rule: target_gain``; ``layout``: (ranks, workers)."""
        weighting = LearningProgressWeights(priors, adaptive=adaptive, settings=self.mixing_settings)
        target = self.target_batch() if adaptive and self.mixing_settings.rule == "target_gain" else None
        previous, self.mixer = self.mixer, SourceMixer(loaders, weighting, seed=self.hparams.seed,
                                                       steps_per_epoch=steps_per_epoch, layout=layout, target=target)
        if previous is not None:
            self.mixer.load_state_dict(previous.state_dict())
        return self.mixer

    def target_batch(self):
        """This rank's batch of ``adaptive_target``: its own slice of the set's first images, one
        caption each (drawn once, by the seed), without augmentation."""
        h, target = self.hparams, self.hparams.adaptive_target
        records, _ = read_captions(self.path(target["annotations"]), self.path(target["images"]), "train",
                                   h.skip_bad_samples, format="coco")
        rank, ranks = self.data_parallel_rank()
        size = target["size"]
        if len(records) < size * ranks:
            raise ValueError(f"data.adaptive_target ({self.path(target['annotations'])}): {len(records)} usable "
                             f"images, fewer than size {size} × {ranks} rank(s); lower data.adaptive_target.size")
        dataset = CaptionDataset(records[rank * size:(rank + 1) * size], self.tokenizer,
                                 image_transform(self.image_size, train=False), self.context_length, train=True,
                                 seed=h.seed, skip_bad_samples=h.skip_bad_samples)
        batch = collate_train([dataset[i] for i in range(len(dataset))])
        if len(batch) < 2:
            raise ValueError(f"data.adaptive_target ({self.path(target['annotations'])}): fewer than 2 of this rank's "
                             f"{size} images could be read")
        return batch

    # With sources, Lightning saves the mixer's position with the loader itself.
    def state_dict(self) -> dict:
        return {} if self.hparams.train_sources else super().state_dict()

    def task_inputs(self, task: str) -> CaptionInputs:
        """The training captions, whose most frequent one is the captioning baseline, and the
        class names and tokenized prompts of the zero-shot sets that this stage reads."""
        inputs = caption_inputs(self.records, self.input_shape)
        inputs.zero_shot = self.zero_shot_inputs()
        return inputs

    def zero_shot_inputs(self) -> dict[str, ZeroShotClasses]:
        """The class names and tokenized prompts of each zero-shot set read."""
        return {name: self._zero_shot_classes(name, dataset)
                for sets in self.zero_shot_sets.values() for name, dataset in sets.items()}

    def _zero_shot_classes(self, name: str, dataset: ClassificationSet) -> ZeroShotClasses:
        texts = [template.format(c=classname) for classname in dataset.classnames for template in dataset.templates]
        tokens, lengths = self.tokenizer.encode_batch(texts, self.context_length, return_lengths=True)
        cut = [text for text, length in zip(texts, lengths) if length > self.context_length]
        if cut:
            log.warning("zero-shot set %s: %d prompts are cut to the context length %d, e.g. %r", name, len(cut),
                        self.context_length, cut[0])
        return ZeroShotClasses(dataset.classnames, dataset.templates,
                               tokens.reshape(len(dataset.classnames), len(dataset.templates), -1))

    def val_dataloader(self):
        return self._eval_loaders("val")

    def test_dataloader(self):
        return self._eval_loaders("test")

    def _eval_loaders(self, split: str):
        """The captions' loader (if the split has captions), then a loader per zero-shot set; a
        single loader as itself."""
        loaders = [self.eval_loader(self.dataset(split), self.collate_eval)] \
            if self.hparams[f"{split}_annotations"] is not None else []
        for name, dataset in self.zero_shot_sets.get(split, {}).items():
            stream = ClassificationStream(dataset, name, image_transform(self.image_size, train=False),
                                          self.image_size, self.hparams.skip_bad_samples)
            if self.trainer is not None:
                stream.rank, stream.world_size = self.trainer.global_rank, self.trainer.world_size
            loaders.append(GatedLoader(stream, batch_size=self.hparams.eval_batch_size,
                                       num_workers=self.hparams.num_workers, collate_fn=collate_classification(name),
                                       due=self._zero_shot_due))
        return loaders[0] if len(loaders) == 1 else loaders

    def _zero_shot_due(self) -> bool:
        """Whether this evaluation classifies: always in validate and test; in fit, not in the
        sanity check, and at the steps ``zeroshot_every_n_steps`` names."""
        trainer, every = self.trainer, self.hparams.zeroshot_every_n_steps
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return True
        return not trainer.sanity_checking and (every is None or trainer.global_step % every == 0)

    def predict_dataloader(self) -> DataLoader:
        paths = self.hparams.predict_images
        if not paths:
            raise ValueError("nothing to predict: set --data.predict_images=[path.jpg, ...]")
        return DataLoader(ImageFiles(paths, image_transform(self.image_size, train=False)),
                          batch_size=self.hparams.eval_batch_size)


def _plain(sets: dict[str, ZeroShotSet | dict] | None) -> dict[str, dict] | None:
    """Zero-shot sets as dicts, whether given as ``ZeroShotSet`` or as dicts."""
    if sets is None:
        return None
    return {name: dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else dict(spec)
            for name, spec in sets.items()}


class ImageFiles(torch.utils.data.Dataset):
    """Image files given by path, for prediction."""

    def __init__(self, paths: list[str], transform):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.transform(load_rgb_image(self.paths[index])), "path": self.paths[index]}
