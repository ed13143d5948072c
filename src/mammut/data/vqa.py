"""Reader of the VQAv2 format: a questions file and, except on test splits, an annotations file.

Questions (``v2_OpenEnded_mscoco_<split>_questions.json``) hold ``questions``, each with
``question_id``, ``image_id`` and ``question``. Annotations (``v2_mscoco_<split>_annotations.json``)
hold ``annotations``, each with ``question_id``, ``image_id``, 10 ``answers`` (``{"answer": ...}``),
``multiple_choice_answer``, ``question_type`` and ``answer_type``.

Image files are found with a path pattern formatted with the image id: ``{image_id:012d}.jpg``
(the demo world), ``COCO_val2014_{image_id:012d}.jpg`` (COCO 2014), ``{image_id}.jpg``, ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mammut.answers import normalize_answer
from mammut.data.errors import DataFormatError
from mammut.data.json_records import field, load_json, reject


@dataclass(frozen=True)
class VQARecord:
    question_id: int
    image_id: int
    path: Path
    question: str
    answers: tuple[str, ...] = ()  # the annotators' answers; empty without an annotations file
    multiple_choice_answer: str = ""
    question_type: str = ""
    answer_type: str = ""


def image_path(image_root: Path, pattern: str, image_id: int) -> Path:
    try:
        return image_root / pattern.format(image_id=image_id)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"image pattern {pattern!r} must format with {{image_id}} only, "
                         f"e.g. 'COCO_val2014_{{image_id:012d}}.jpg' ({error!r})") from error


def read_vqa(
    questions_file: str | os.PathLike,
    annotations_file: str | os.PathLike | None,
    image_root: str | os.PathLike,
    image_pattern: str = "{image_id:012d}.jpg",
    skip_bad_samples: bool = False,
) -> tuple[list[VQARecord], int]:
    """Read VQAv2 questions (and their annotations) into records ordered by question id.

    A malformed file (invalid JSON, a missing key or a value of the wrong type, a duplicate
    question id, a question without an annotation or the reverse, an image id that differs
    between the two files) raises ``DataFormatError`` naming the file and record. An empty
    question and a question with no answer left after normalisation (only "", "a", "." ...)
    raise too, unless ``skip_bad_samples``:
    then they are dropped, logged and counted. Image files are not opened here.

    Returns:
        The records and the number of questions skipped.
    """
    questions_file, image_root = Path(questions_file), Path(image_root)
    questions = field(_object(questions_file), "questions", list, questions_file, "top level")
    annotations = _annotations_by_question(Path(annotations_file)) if annotations_file else None

    records: dict[int, VQARecord] = {}
    skipped = 0
    for position, question in enumerate(questions):
        question_id = field(question, "question_id", int, questions_file, f"questions[{position}]")
        where = f"{questions_file}: question id {question_id}"
        image_id = field(question, "image_id", int, questions_file, f"question id {question_id}")
        text = field(question, "question", str, questions_file, f"question id {question_id}").strip()
        if question_id in records:
            raise DataFormatError(f"{where}: duplicate question id")
        record = VQARecord(question_id, image_id, image_path(image_root, image_pattern, image_id), text)
        if annotations is not None:
            if question_id not in annotations:
                raise DataFormatError(f"{where}: no annotation in {annotations_file}")
            annotation = annotations.pop(question_id)
            if annotation.image_id != image_id:
                raise DataFormatError(f"{where}: image id {image_id}, but {annotation.image_id} in {annotations_file}")
            record = VQARecord(question_id, image_id, record.path, text, annotation.answers,
                               annotation.multiple_choice_answer, annotation.question_type, annotation.answer_type)
        problem = _problem(record, annotations is not None)
        if problem:
            reject(f"{where}: {problem}", skip_bad_samples)
            skipped += 1
            continue
        records[question_id] = record
    if annotations:
        orphan = next(iter(annotations))
        raise DataFormatError(f"{annotations_file}: question id {orphan} is annotated but not in {questions_file}")
    return [records[question_id] for question_id in sorted(records)], skipped


def _problem(record: VQARecord, annotated: bool) -> str | None:
    if not record.question:
        return "empty question"
    if annotated and not any(answer.strip() for answer in record.answers):
        return "no non-empty answer"
    # Training draws from the normalised answers, and the metric compares normalised ones.
    if annotated and not any(normalize_answer(answer) for answer in record.answers):
        return f"no answer left after normalisation: {list(dict.fromkeys(record.answers))}"
    return None


def _object(file: Path) -> dict:
    data = load_json(file)
    if not isinstance(data, dict):
        raise DataFormatError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _annotations_by_question(file: Path) -> dict[int, VQARecord]:
    """Annotations as partial records (no path, no question) keyed by question id."""
    annotations = field(_object(file), "annotations", list, file, "top level")
    by_question: dict[int, VQARecord] = {}
    for position, annotation in enumerate(annotations):
        question_id = field(annotation, "question_id", int, file, f"annotations[{position}]")
        where = f"question id {question_id}"
        if question_id in by_question:
            raise DataFormatError(f"{file}: {where}: duplicate annotation")
        answers = field(annotation, "answers", list, file, where)
        by_question[question_id] = VQARecord(
            question_id=question_id,
            image_id=field(annotation, "image_id", int, file, where),
            path=Path(),
            question="",
            # Kept as written: the official accuracy compares the ground truth unstripped.
            answers=tuple(field(answer, "answer", str, file, f"{where}, answers[{i}]")
                          for i, answer in enumerate(answers)),
            multiple_choice_answer=field(annotation, "multiple_choice_answer", str, file, where).strip(),
            question_type=field(annotation, "question_type", str, file, where),
            answer_type=field(annotation, "answer_type", str, file, where),
        )
    return by_question
