"""Video annotation files in their published schemas, read unchanged.

- MSR-VTT captions (``train_val_videodatainfo.json``, ``test_videodatainfo.json``): ``videos``
  (``video_id`` such as ``"video7"``, a numeric ``id``, a ``split``) and ``sentences``
  (``caption``, ``video_id``), read into one ``CaptionRecord`` per video of the split asked for.
- MSRVTT-QA and MSVD-QA (``train_qa.json``, ...): a list of ``question``, ``answer``, ``id`` and
  a numeric ``video_id``. MSRVTT-QA's video ``7`` is the file of MSR-VTT's ``"video7"``; MSVD-QA's
  ``7`` is the clip that ``youtube_mapping.txt`` maps to ``vid7`` (lines like
  ``-4wsuPCjDBc_5_15 vid1``). Read into ``VQARecord``s whose one answer is the reference and
  whose question type is the question's first word.

Video files are found by name through a pattern, ``{video}.mp4`` by default (MSVD's clips are
``{video}.avi``). Files are not opened here. Every format error names the file and the record.
"""

from __future__ import annotations

import os
from pathlib import Path

from mammut.data.coco import CaptionRecord
from mammut.data.errors import DataFormatError
from mammut.data.json_records import field, load_json, reject
from mammut.data.vqa import VQARecord


def video_path(video_root: Path, pattern: str, video: str) -> Path:
    try:
        return video_root / pattern.format(video=video)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"video pattern {pattern!r} must format with {{video}} only, e.g. '{{video}}.mp4'") from error


def read_msrvtt_captions(annotations_file: str | os.PathLike, video_root: str | os.PathLike, split: str,
                         video_pattern: str = "{video}.mp4", skip_bad_samples: bool = False,
                         ) -> tuple[list[CaptionRecord], int]:
    """The videos of ``split`` ("train", "validate" or "test", as MSR-VTT names them) with all their
    captions, ordered by numeric id. A video without captions, or an empty caption, raises
    ``DataFormatError`` unless ``skip_bad_samples``, which drops it, logged and counted.

    Returns:
        The records (``image_id`` is the video's numeric ``id``) and the number skipped.
    """
    file, video_root = Path(annotations_file), Path(video_root)
    document = load_json(file)
    videos = field(document, "videos", list, file, "top level")
    sentences = field(document, "sentences", list, file, "top level")
    chosen: dict[str, tuple[int, list[str]]] = {}  # video_id -> (id, captions), for the split asked for
    names, numbers = set(), set()
    for position, video in enumerate(videos):
        name = field(video, "video_id", str, file, f"videos[{position}]")
        number = field(video, "id", int, file, f"video {name!r}")
        if name in names or number in numbers:
            raise DataFormatError(f"{file}: video {name!r}: duplicate video_id, or id {number} used twice")
        names.add(name), numbers.add(number)
        if field(video, "split", str, file, f"video {name!r}") == split:
            chosen[name] = (number, [])
    if not chosen:
        splits = sorted({video.get("split") for video in videos if isinstance(video, dict)})
        raise DataFormatError(f"{file}: no video of split {split!r}; its splits are {splits}")
    skipped = 0
    for position, sentence in enumerate(sentences):
        name = field(sentence, "video_id", str, file, f"sentences[{position}]")
        caption = field(sentence, "caption", str, file, f"sentences[{position}] (video {name!r})").strip()
        if name not in chosen:
            continue  # another split's video, or one this file does not list
        if not caption:
            reject(f"{file}: sentences[{position}] (video {name!r}): empty caption", skip_bad_samples)
            skipped += 1
            continue
        chosen[name][1].append(caption)
    records = []
    for name, (number, captions) in sorted(chosen.items(), key=lambda item: item[1][0]):
        if not captions:
            reject(f"{file}: video {name!r}: no caption", skip_bad_samples)
            skipped += 1
            continue
        records.append(CaptionRecord(number, video_path(video_root, video_pattern, name), tuple(captions)))
    return records, skipped


def read_msvd_mapping(mapping_file: str | os.PathLike) -> dict[int, str]:
    """MSVD's ``youtube_mapping.txt``: numeric video id (``vid7`` -> 7) -> clip name."""
    file, mapping = Path(mapping_file), {}
    for line_number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("vid") or not parts[1][3:].isdigit():
            raise DataFormatError(f"{file}: line {line_number}: expected '<clip name> vid<number>', got {line!r}")
        number = int(parts[1][3:])
        if number in mapping:
            raise DataFormatError(f"{file}: line {line_number}: vid{number} is mapped twice")
        mapping[number] = parts[0]
    return mapping


def read_video_qa(questions_file: str | os.PathLike, video_root: str | os.PathLike,
                  video_pattern: str = "{video}.mp4", mapping_file: str | os.PathLike | None = None,
                  skip_bad_samples: bool = False) -> tuple[list[VQARecord], int]:
    """MSRVTT-QA (``video_id`` 7 -> video ``"video7"``) or, with MSVD's ``mapping_file``, MSVD-QA,
    ordered by question id. An empty question or answer raises ``DataFormatError`` unless
    ``skip_bad_samples``, which drops it, logged and counted.

    Returns:
        The records (``image_id`` is the numeric video id; ``answers`` holds the one answer) and
        the number skipped.
    """
    file, video_root = Path(questions_file), Path(video_root)
    mapping = read_msvd_mapping(mapping_file) if mapping_file else None
    questions = load_json(file)
    if not isinstance(questions, list):
        raise DataFormatError(f"{file}: expected a JSON list of questions, got {type(questions).__name__}")
    records: dict[int, VQARecord] = {}
    skipped = 0
    for position, entry in enumerate(questions):
        question_id = field(entry, "id", int, file, f"[{position}]")
        where = f"question id {question_id}"
        number = field(entry, "video_id", int, file, where)
        question = field(entry, "question", str, file, where).strip()
        answer = field(entry, "answer", str, file, where).strip()
        if question_id in records:
            raise DataFormatError(f"{file}: {where}: duplicate question id")
        if mapping is not None and number not in mapping:
            raise DataFormatError(f"{file}: {where}: video vid{number} is not in {mapping_file}")
        if not question or not answer:
            reject(f"{file}: {where}: empty {'question' if not question else 'answer'}", skip_bad_samples)
            skipped += 1
            continue
        name = mapping[number] if mapping is not None else f"video{number}"
        # Results on these datasets are broken down by the question's first word (what, who, how, ...).
        records[question_id] = VQARecord(question_id, number, video_path(video_root, video_pattern, name), question,
                                         (answer,), answer, question_type=question.split()[0].lower())
    return [records[question_id] for question_id in sorted(records)], skipped
