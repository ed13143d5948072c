"""Open-vocabulary detection: box and class heads on the visual tokens, classes scored against
text (MaMMUT, arXiv 2303.16839, Sec. 3.4; heads and loss after OWL-ViT, arXiv 2205.06230).

Every patch token predicts a box and a class embedding (``mammut.model.detection_head``); the
classes are the text embeddings of their names from the decoder's contrastive pass, averaged
over prompt templates, so any words can be asked for at test time. Training matches predictions
to objects one to one (``mammut.model.set_loss``). Evaluation writes the detections as a COCO
results JSON and scores that file with pycocotools' COCOeval (AP, AP50, AP75, AP per class, AP on
the novel classes, those of frequency "r") and, for files with LVIS's federated fields, with
LVIS's rules (APr, APc, APf), each beside the class-prior baseline: every class at its training
frequency in uniform boxes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torchvision.ops import box_convert, nms

from mammut.data.batch import DetectionBatch
from mammut.data.images import load_rgb_image
from mammut.data.instances import Category
from mammut.data.json_records import write_json
from mammut.data.transforms import denormalize
from mammut.metrics.detection import coco_evaluation, lvis_evaluation
from mammut.model import Mammut, MammutConfig
from mammut.model.detection_head import DetectionHead, Detections
from mammut.model.set_loss import SetLossWeights, set_loss, xyxy
from mammut.task import Task, TaskInputs, TaskLoss, TaskReport
from mammut.tasks.detection.pseudo_labels import PseudoBox, PseudoLabelConfig, image_pseudo_boxes, pseudo_label_file
from mammut.visualize import legible_boxes, true_and_predicted

log = logging.getLogger(__name__)


@dataclass
class DetectionInputs(TaskInputs):
    """What ``DetectionTask`` needs from its data, per split ("train", "val", "test", "predict")."""

    categories: dict[str, list[Category]] = field(default_factory=dict)
    ground_truth: dict[str, Path] = field(default_factory=dict)  # the annotation file COCOeval scores against
    federated: dict[str, bool] = field(default_factory=dict)  # LVIS-style negatives: scored by LVIS's rules too
    class_prior: dict[str, list[dict]] = field(default_factory=dict)  # the baseline's detections
    predict: dict[int, str] = field(default_factory=dict)  # image id -> file, for ``mammut predict``
    # Pseudo-labelling a caption set in ``mammut predict`` (``pseudo_labels.py``): per image id the
    # indices of its captions' queries in categories["predict"], and the set's COCO image entries.
    image_queries: dict[int, list[int]] = field(default_factory=dict)
    caption_images: list[dict] = field(default_factory=list)


def class_name(category: Category) -> str:
    return category.name.replace("_", " ")  # LVIS names are "baseball_bat"


def class_queries(model: Mammut, tokenizer, context_length: int, prompts: list[list[str]]) -> Tensor:
    """(K, E) unit-norm class queries: the mean text embedding (the contrastive pass) of each
    class's prompts, ``prompts[k]`` for class k, as many for every class."""
    if len({len(own) for own in prompts}) > 1:
        raise ValueError(f"every class needs as many prompts, got {[len(own) for own in prompts]}")
    tokens = tokenizer.encode_batch([prompt for own in prompts for prompt in own], context_length)
    embeddings = model.text_embedding(tokens.to(model.logit_scale.device))
    mean = embeddings.view(len(prompts), -1, embeddings.shape[-1]).mean(dim=1)
    return torch.nn.functional.normalize(mean, dim=-1)


class DetectionTask(Task):
    """Open-vocabulary detection heads on the shared model's visual tokens."""

    inputs_type = DetectionInputs

    def __init__(
        self,
        templates: list[str] | None = None,
        focal_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        max_detections: int = 100,
        draw_threshold: float = 0.3,
        num_logged_samples: int = 8,
        train_prompts: str = "mean",
        pseudo_labels: PseudoLabelConfig | None = None,
    ):
        """
        Args:
            templates: prompts a class name is put in, e.g. ``["a {}", "a photo of a {}"]``; the
                class's query is the mean of their text embeddings (at evaluation always; in
                training with ``train_prompts="mean"``).
            focal_weight: weight of the sigmoid focal loss (OWL-ViT's 2), with ``focal_alpha`` and
                ``focal_gamma``; ``l1_weight`` and ``giou_weight`` those of the box losses (5, 2).
                The same weights make the matching cost.
            max_detections: kept per image, the highest scores over all tokens and classes (COCO
                scores 100; LVIS up to 300).
            draw_threshold: detections drawn in TensorBoard and by ``mammut predict`` score at least this.
            num_logged_samples: validation images drawn with predicted and true boxes (and, when
                pseudo-labelling, the first images with their pseudo-boxes).
            train_prompts: "mean": in training too, each class's query is its templates' mean;
                "random": each class takes one template drawn at random at each step (OWL-ViT's
                prompt augmentation), so the heads meet every phrasing.
            pseudo_labels: how ``mammut predict`` keeps pseudo-boxes when its data is a caption
                set (``--data.pseudo_label_captions``; ``pseudo_labels.py``); OWL-ST's settings by default.
        """
        super().__init__()
        self.templates = list(templates or ["a {}"])
        if any("{}" not in t for t in self.templates):
            raise ValueError(f"every template needs a {{}} for the class name, got {self.templates}")
        if train_prompts not in TRAIN_PROMPTS:
            raise ValueError(f"train_prompts must be one of {TRAIN_PROMPTS}, got {train_prompts!r}")
        self.train_prompts = train_prompts
        self.pseudo_labels = pseudo_labels if isinstance(pseudo_labels, PseudoLabelConfig) else \
            PseudoLabelConfig(**(pseudo_labels or {}))
        self._pseudo_boxes: dict[int, list[PseudoBox]] = {}  # of this prediction run, by image id
        self._query_embeddings: Tensor | None = None  # of the caption set's queries, computed once per run
        self._frozen_queries: tuple[list[str], Tensor] | None = None  # training's, while the text side is frozen
        self.weights = SetLossWeights(focal_weight, l1_weight, giou_weight, focal_alpha, focal_gamma)
        self.max_detections, self.draw_threshold = max_detections, draw_threshold
        self.num_logged_samples = num_logged_samples
        self.head: DetectionHead | None = None
        self._results: dict[str, list[dict]] = {"val": [], "test": []}
        self._image_ids: dict[str, list[int]] = {"val": [], "test": []}
        self._samples: dict[str, tuple[Tensor, list[str]]] = {}
        self._predictions: list[dict] = []  # of this prediction run so far, rewritten after each batch
        self.boxes_dropped = 0

    def build(self, architecture: MammutConfig) -> None:
        self.head = DetectionHead(architecture.vision_width)

    def connect(self, context) -> None:
        super().connect(context)
        self._frozen_queries = None  # computed again from the weights of this run

    # --------------------------------------------------------------- forward
    def queries(self, model: Mammut, names: list[str], random_template: bool = False) -> Tensor:
        """(K, E) unit-norm class embeddings: each name's text embedding (the contrastive pass),
        averaged over the templates, or with ``random_template`` in one template drawn per name."""
        if random_template:
            drawn = torch.randint(len(self.templates), (len(names),)).tolist()
            prompts = [[self.templates[k].format(name)] for name, k in zip(names, drawn)]
        else:
            prompts = [[template.format(name) for template in self.templates] for name in names]
        return class_queries(model, self.tokenizer, self.context.architecture.context_length, prompts)

    def detect(self, model: Mammut, images: Tensor, names: list[str], queries: Tensor | None = None) -> Detections:
        """Boxes and class logits of every patch token, for ``names`` (or their ``queries``, given)."""
        # One token per patch, whatever token fusion the model does for its image embedding and decoder.
        visual_tokens = model.encode_patches(images)
        patch_tokens = visual_tokens[:, model.vision.num_prefix_tokens:]
        grid = tuple(model.vision.vit.patch_embed.grid_size)
        if patch_tokens.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"{patch_tokens.shape[1]} patch tokens do not fill the {grid[0]}x{grid[1]} grid")
        return self.head(patch_tokens, grid, model.project_tokens,
                         self.queries(model, names) if queries is None else queries)

    def names(self, split: str) -> list[str]:
        return [class_name(c) for c in self.inputs.categories[split]]

    # --------------------------------------------------------------- training
    def empty_batch(self, device) -> DetectionBatch:
        empty = DetectionBatch.empty(num_skipped=0)
        empty.images = self.empty_inputs(device)
        empty.known_categories = torch.zeros(0, len(self.names("train")), dtype=torch.bool, device=device)
        return empty

    def training_queries(self, model: Mammut, names: list[str]) -> Tensor:
        """The class queries of a training step. Where nothing can change them between steps (the
        text side frozen, without dropout, each class in its templates' mean) they are computed
        once: self-training has hundreds of classes, whose prompts would cost more than the images."""
        if self.train_prompts == "random":
            return self.queries(model, names, random_template=True)
        text_side = [*model.decoder.parameters(), *(model.text_projection.parameters() if model.text_projection else [])]
        if any(p.requires_grad for p in text_side) or model.config.dropout > 0:
            return self.queries(model, names)
        if self._frozen_queries is None or self._frozen_queries[0] != names:
            with torch.no_grad():
                self._frozen_queries = (list(names), self.queries(model, names))
        return self._frozen_queries[1]

    def loss(self, model: Mammut, batch: DetectionBatch) -> TaskLoss:
        names = self.names("train")
        detections = self.detect(model, batch.images, names, self.training_queries(model, names))
        normaliser = num_boxes(batch)  # a collective: every rank takes part, one with an empty batch too
        if not len(batch):
            zero = detections.logits.sum() * 0 + detections.boxes.sum() * 0  # joined to the graph
            return TaskLoss(zero, {"focal": zero, "l1": zero, "giou": zero})
        losses = set_loss(detections.logits, detections.boxes, batch.labels, batch.boxes, batch.known_categories,
                          batch.crowd_boxes, self.weights, normaliser)
        self.count_dropped_boxes(batch.boxes_dropped)
        return TaskLoss(losses.pop("total"), {**losses, "boxes_dropped": torch.tensor(float(self.boxes_dropped))})

    def count_dropped_boxes(self, dropped: int) -> None:
        """Boxes the scale jitter cut to nothing are counted (logged as ``boxes_dropped``, the total
        so far on this rank), and the first time named in the log."""
        if dropped and not self.boxes_dropped:
            log.info("a random crop left too little of %d boxes of a training batch: they are dropped as "
                     "objects, and counted in train/detection/boxes_dropped", dropped)
        self.boxes_dropped += dropped

    # ------------------------------------------------------------- evaluation
    def results(self, detections: Detections, batch: DetectionBatch, categories: list[Category]) -> list[list[dict]]:
        """Per image, its ``max_detections`` best (token, class) pairs as COCO results in the
        original image's pixels."""
        out = []
        probabilities = detections.logits.float().sigmoid()
        for i in range(len(batch)):
            scores, flat = probabilities[i].flatten().topk(min(self.max_detections, probabilities[i].numel()))
            tokens, classes = flat // len(categories), flat % len(categories)
            height, width = batch.image_sizes[i].tolist()
            corners = xyxy(detections.boxes[i, tokens].float()).clamp(0, 1)
            corners = (corners * torch.tensor([width, height, width, height], device=corners.device)).tolist()
            out.append([{"image_id": int(batch.image_ids[i]), "category_id": categories[k].id,
                         "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                         "score": round(float(s), 5)}
                        for (x0, y0, x1, y1), k, s in zip(corners, classes.tolist(), scores.tolist())])
        return out

    def evaluate(self, model: Mammut, batch: DetectionBatch, stage: str, batch_idx: int) -> None:
        categories = self.inputs.categories[stage]
        detections = self.detect(model, batch.images, self.names(stage))
        per_image = self.results(detections, batch, categories)
        self._results[stage].extend(r for image in per_image for r in image)
        self._image_ids[stage].extend(batch.image_ids.tolist())
        if batch_idx == 0:
            self._samples[stage] = self.drawn_samples(batch, per_image, categories)

    def drawn_samples(self, batch: DetectionBatch, per_image: list[list[dict]],
                      categories: list[Category]) -> tuple[Tensor, list[str]]:
        """Model inputs with the predicted boxes (scored at least ``draw_threshold``) and the true
        ones, and a line of text each."""
        names = {c.id: c.name for c in categories}
        images, texts = [], []
        for i in range(min(self.num_logged_samples, len(batch))):
            side = batch.images.shape[-1]
            height, width = batch.image_sizes[i].tolist()
            to_input = [side / width, side / height, side / width, side / height]
            shown = [r for r in best_class_per_box(per_image[i]) if r["score"] >= self.draw_threshold]
            predicted = [[v * s for v, s in zip(box_corners(r["bbox"]), to_input)] for r in shown]
            labels = [f"{names[r['category_id']]} {r['score']:.2f}" for r in shown]
            true_names = [categories[k].name for k in batch.labels[i].tolist()]
            images.append(true_and_predicted(denormalize(batch.images[i:i + 1].float())[0],
                                             (xyxy(batch.boxes[i].float()) * side).tolist(), true_names,
                                             predicted, labels))
            texts.append(f"image {int(batch.image_ids[i])}: predicted {', '.join(labels) or 'nothing'}; "
                         f"true {', '.join(true_names) or 'nothing'}")
        return torch.stack(images), texts

    def report(self, stage: str) -> TaskReport | None:
        results, image_ids = gathered(self._results[stage]), sorted(set(gathered(self._image_ids[stage])))
        samples = self._samples.pop(stage, None)
        self.reset(stage)
        if not image_ids:
            return None
        categories = self.inputs.categories[stage]
        novel = [c.id for c in categories if c.frequency == "r"]
        ground_truth = self.inputs.ground_truth[stage]
        self.write_results(results, f"detections_{stage}.json")
        scores = coco_evaluation(ground_truth, results, image_ids, novel)
        baseline_results = self.inputs.class_prior.get(stage)
        baselines = coco_evaluation(ground_truth, baseline_results, image_ids, novel) if baseline_results else {}
        if self.inputs.federated.get(stage):
            scores.update(lvis_scores(ground_truth, results, image_ids))
            if baseline_results:
                baselines.update(lvis_scores(ground_truth, baseline_results, image_ids))
        # A mean over nothing (-1: e.g. AP_novel without novel objects, or no category of frequency "c") is no score.
        scores = {name: value for name, value in scores.items() if value != -1}
        baselines = {name: value for name, value in baselines.items() if value != -1}
        return TaskReport(scores, baselines, {"AP": len(image_ids)}, samples)

    def write_results(self, results: list[dict], name: str) -> None:
        """The detections as a COCO results JSON in the run's folder (on the first rank only)."""
        directory = self.context.output_dir
        if directory is None or (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
            return
        write_json(directory / name, results)
        log.info("detections written to %s", directory / name)

    def reset(self, stage: str) -> None:
        self._results[stage], self._image_ids[stage] = [], []
        self._samples.pop(stage, None)

    # ------------------------------------------------------------- prediction
    def predict(self, model: Mammut, batch: DetectionBatch) -> list[dict]:
        """Detections of ``--data.predict_words`` in each image (each box once, with its best word),
        drawn into ``predictions/`` beside ``predictions.json`` (COCO results, with each detection's
        file and word) in the run's folder; for a caption set, its pseudo-boxes (``pseudo_label``)."""
        if self.inputs.image_queries:
            return self.pseudo_label(model, batch)
        categories = self.inputs.categories["predict"]
        files = self.inputs.predict
        per_image = self.results(self.detect(model, batch.images, self.names("predict")), batch, categories)
        words = {c.id: c.name for c in categories}
        out = []
        for image_id, results in zip(batch.image_ids.tolist(), per_image):
            kept = [{**r, "file_name": files[image_id], "word": words[r["category_id"]]}
                    for r in best_class_per_box(results) if r["score"] >= self.draw_threshold]
            out.append({"file_name": files[image_id], "detections": kept})
            self.draw_prediction(files[image_id], kept)
            self._predictions.extend(kept)
        self.write_results(self._predictions, "predictions.json")
        return out

    def pseudo_label(self, model: Mammut, batch: DetectionBatch) -> list[dict]:
        """Each image's pseudo-boxes: its boxes that its own captions' queries find
        (``pseudo_labels.image_pseudo_boxes``), kept until ``end_prediction`` writes them; the
        first ``num_logged_samples`` images are drawn with them into ``predictions/``."""
        queries = self.inputs.categories["predict"]
        if self._query_embeddings is None:
            self._query_embeddings = self.queries(model, self.names("predict"))
        detections = self.detect(model, batch.images, [], self._query_embeddings)
        probabilities = detections.logits.float().sigmoid()
        out = []
        for i, image_id in enumerate(batch.image_ids.tolist()):
            found = image_pseudo_boxes(probabilities[i], detections.boxes[i], self.inputs.image_queries[image_id],
                                       tuple(batch.image_sizes[i].tolist()), self.pseudo_labels)
            self._pseudo_boxes[image_id] = found
            kept = [{"file_name": self.inputs.predict[image_id], "word": queries[b.query].name, "bbox": b.box,
                     "score": b.score} for b in found]
            if len(self._pseudo_boxes) <= self.num_logged_samples:
                self.draw_prediction(self.inputs.predict[image_id], kept)
            out.append({"file_name": self.inputs.predict[image_id], "detections": kept})
        return out

    def end_prediction(self) -> None:
        """After a pseudo-labelling run: every rank's pseudo-boxes as one LVIS file,
        ``pseudo_labels.json`` in the run's folder."""
        if not self.inputs.image_queries:
            return
        boxes = dict(pair for pair in gathered(list(self._pseudo_boxes.items())))
        self._pseudo_boxes, self._query_embeddings = {}, None
        queries = [c.name for c in self.inputs.categories["predict"]]
        labels = pseudo_label_file(self.inputs.caption_images, queries, self.inputs.image_queries, boxes,
                                   self.pseudo_labels)
        self.write_results(labels, "pseudo_labels.json")
        log.info("pseudo-labels: %d boxes of %d queries in %d of %d images (images without a box scored %.2f or "
                 "more are left out)", len(labels["annotations"]), len(labels["categories"]), len(labels["images"]),
                 len(boxes), self.pseudo_labels.image_threshold)

    def draw_prediction(self, file: str, detections: list[dict]) -> None:
        directory = self.context.output_dir
        if directory is None:
            return
        # The pixels the model saw: wide greys scaled, transparency composited.
        picture = legible_boxes(load_rgb_image(file), [box_corners(d["bbox"]) for d in detections],
                                [f"{d['word']} {d['score']:.2f}" for d in detections])
        (directory / "predictions").mkdir(parents=True, exist_ok=True)
        picture.save(directory / "predictions" / f"{Path(file).stem}.png")

    def format_prediction(self, prediction: dict) -> str:
        found = ", ".join(f"{d['word']} {d['score']:.2f} at {[round(v) for v in d['bbox']]}"
                          for d in prediction["detections"])
        return f"{prediction['file_name']}\t{found or 'nothing'}"


LVIS_REPORTED = ("AP", "AP50", "AP75", "APr", "APc", "APf", "AR@300")
TRAIN_PROMPTS = ("mean", "random")


def lvis_scores(ground_truth: Path, results: list[dict], image_ids: list[int]) -> dict[str, float]:
    """LVIS's federated AP, overall and by category frequency, named ``lvis_*``."""
    scores = lvis_evaluation(ground_truth, results, image_ids)
    return {f"lvis_{name}": scores[name] for name in LVIS_REPORTED}


def best_class_per_box(results: list[dict], overlap: float = 0.5) -> list[dict]:
    """What a person wants to see: each box once, with its best-scoring class, and none that
    overlaps a better one by more than ``overlap`` IoU (non-maximum suppression over all classes).
    COCO AP scores ``results`` as they are, every class of every box, as detectors report them."""
    if not results:
        return []
    boxes = box_convert(torch.tensor([r["bbox"] for r in results], dtype=torch.float32), "xywh", "xyxy")
    scores = torch.tensor([r["score"] for r in results])
    return [results[i] for i in nms(boxes, scores, overlap).tolist()]


def box_corners(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def num_boxes(batch: DetectionBatch) -> float:
    """The batch's target boxes, averaged over the ranks (DETR's normaliser), at least 1."""
    count = torch.tensor(float(sum(len(labels) for labels in batch.labels)), device=batch.images.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count /= dist.get_world_size()
    return max(float(count), 1.0)


def gathered(items: list) -> list:
    """Every rank's ``items``, concatenated, on every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(items)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]
