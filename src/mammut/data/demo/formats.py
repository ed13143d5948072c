"""The public file layouts: COCO captions, VQAv2 questions/annotations, COCO/LVIS instances.

Each function turns a split's records into the exact JSON document a reader of
the real dataset expects, plus a few extra keys (`canonical`, `colour`, `size`)
that real readers ignore. `file_name` is the bare file name; the image folder is
`images/{split}/` under the output root.
"""

from .detection import categories, image_instances
from .split import ImageRecord, split_rng
from .vqa import noisy_answers, questions_for_scene
from .writer import info

VQA_DATA_TYPE = "mscoco"  # the value VQAv2 files carry; readers key file names on it


def _image_entry(record: ImageRecord) -> dict:
    size = record.scene.image_size
    return {"id": record.image_id, "file_name": record.file_name, "width": size, "height": size}


def captions_document(records: list[ImageRecord], split: str, seed: int, image_size: int) -> dict:
    """COCO captions: 5 per image (ids image_id*10 + k); `canonical` on each image."""
    return {
        "info": info(split, seed, image_size, "mammut demo world: captions (COCO captions format)"),
        "licenses": [],
        "images": [{**_image_entry(r), "canonical": r.canonical} for r in records],
        "annotations": [
            {"id": r.image_id * 10 + k, "image_id": r.image_id, "caption": caption}
            for r in records
            for k, caption in enumerate(r.captions)
        ],
    }


def vqa_documents(records: list[ImageRecord], split: str, seed: int, image_size: int) -> tuple[dict, dict]:
    """VQAv2 questions and annotations documents; question ids are image_id*10 + k."""
    rng = split_rng(seed, split, "vqa")  # own stream: selecting tasks never changes images
    questions, annotations = [], []
    for record in records:
        for k, question in enumerate(questions_for_scene(record.scene, rng)):
            question_id = record.image_id * 10 + k
            questions.append({"question_id": question_id, "image_id": record.image_id, "question": question.question})
            annotations.append(
                {
                    "question_id": question_id,
                    "image_id": record.image_id,
                    "question_type": question.question_type,
                    "answer_type": question.answer_type,
                    "multiple_choice_answer": question.answer,
                    "answers": noisy_answers(question, rng),
                }
            )
    common = {"license": {}, "data_type": VQA_DATA_TYPE, "data_subtype": split}
    questions_doc = {
        "info": info(split, seed, image_size, "mammut demo world: VQA questions (VQAv2 format)"),
        "task_type": "Open-Ended",
        **common,
        "questions": questions,
    }
    annotations_doc = {
        "info": info(split, seed, image_size, "mammut demo world: VQA annotations (VQAv2 format)"),
        **common,
        "annotations": annotations,
    }
    return questions_doc, annotations_doc


def instances_document(records: list[ImageRecord], split: str, seed: int, image_size: int) -> dict:
    """COCO instances with LVIS-style categories and per-image negative categories."""
    images, annotations = [], []
    for record in records:
        boxes, negatives = image_instances(record.scene, record.image_id, split)
        images.append({**_image_entry(record), "neg_category_ids": negatives, "not_exhaustive_category_ids": []})
        annotations.extend(boxes)
    return {
        "info": info(split, seed, image_size, "mammut demo world: shape detection (COCO/LVIS instances format)"),
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(),
    }
