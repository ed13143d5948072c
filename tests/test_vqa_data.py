"""The VQAv2 reader and the VQA samples built from it, on real JSON and JPEG files."""

import json
from collections import Counter

import pytest
import torch

from mammut.data import BadSampleError, DataFormatError, VQADataset, collate_vqa, image_transform, read_vqa
from mammut.data.tokenizer import CaptionTokenizer

SPLIT = "val"


def demo_records(root, split=SPLIT, **kwargs):
    return read_vqa(root / f"vqa/v2_OpenEnded_mscoco_{split}_questions.json",
                    root / f"vqa/v2_mscoco_{split}_annotations.json", root / f"images/{split}", **kwargs)


def write_vqa(folder, questions, annotations):
    q, a = folder / "questions.json", folder / "annotations.json"
    q.write_text(json.dumps({"questions": questions}))
    a.write_text(json.dumps({"annotations": annotations}))
    return q, a


def annotation(question_id, image_id=7, answers=("red",) * 10, **extra):
    return {"question_id": question_id, "image_id": image_id, "answers": [{"answer": x} for x in answers],
            "multiple_choice_answer": answers[0], "question_type": "colour", "answer_type": "other", **extra}


def test_reads_the_demo_world_with_ten_answers_and_types(tiny_demo):
    records, skipped = demo_records(tiny_demo)
    assert skipped == 0 and records
    assert all(len(r.answers) == 10 and r.path.is_file() for r in records)
    assert {r.question_type for r in records} == {"colour", "shape", "count", "existence", "relation"}
    assert [r.question_id for r in records] == sorted(r.question_id for r in records)
    assert records[0].path.name == f"{records[0].image_id:012d}.jpg"


def test_coco_style_image_pattern(tmp_path):
    q, a = write_vqa(tmp_path, [{"question_id": 1, "image_id": 42, "question": "what color?"}], [annotation(1, 42)])
    records, _ = read_vqa(q, a, tmp_path / "val2014", image_pattern="COCO_val2014_{image_id:012d}.jpg")
    assert records[0].path == tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"
    with pytest.raises(ValueError, match="image pattern"):
        read_vqa(q, a, tmp_path, image_pattern="{split}_{image_id}.jpg")


def test_questions_without_annotations_read_for_prediction(tmp_path):
    q, _ = write_vqa(tmp_path, [{"question_id": 1, "image_id": 42, "question": "what color?"}], [])
    records, _ = read_vqa(q, None, tmp_path)
    assert records[0].answers == () and records[0].question == "what color?"


@pytest.mark.parametrize("questions, annotations, message", [
    ([{"question_id": 1, "image_id": 7, "question": "q?"}], [], "question id 1: no annotation"),
    ([{"question_id": 1, "image_id": 7, "question": "q?"}], [annotation(1, image_id=8)], "image id 7, but 8"),
    ([{"question_id": 1, "image_id": 7}], [annotation(1)], "missing key 'question'"),
    ([{"question_id": 1, "image_id": 7, "question": "q?"}], [annotation(1), annotation(2)], "question id 2 is annotated"),
    ([{"question_id": "1", "image_id": 7, "question": "q?"}], [annotation(1)], "'question_id' must be int"),
])
def test_malformed_files_name_the_record(tmp_path, questions, annotations, message):
    q, a = write_vqa(tmp_path, questions, annotations)
    with pytest.raises(DataFormatError, match=message):
        read_vqa(q, a, tmp_path)


def test_invalid_json_names_the_file(tmp_path):
    q, a = write_vqa(tmp_path, [], [])
    a.write_text('{"annotations": [')
    with pytest.raises(DataFormatError, match="annotations.json: invalid JSON"):
        read_vqa(q, a, tmp_path)


def test_empty_questions_and_answers_fail_or_are_skipped_and_counted(tmp_path):
    questions = [{"question_id": 1, "image_id": 7, "question": "  "},
                 {"question_id": 2, "image_id": 7, "question": "what color?"},
                 {"question_id": 3, "image_id": 7, "question": "what shape?"}]
    q, a = write_vqa(tmp_path, questions, [annotation(1), annotation(2), annotation(3, answers=("",) * 10)])
    with pytest.raises(DataFormatError, match="question id 1: empty question"):
        read_vqa(q, a, tmp_path)
    records, skipped = read_vqa(q, a, tmp_path, skip_bad_samples=True)
    assert [r.question_id for r in records] == [2] and skipped == 2


@pytest.fixture
def dataset(tiny_demo):
    def make(train, context_length=24, **kwargs):
        records, _ = demo_records(tiny_demo)
        tokenizer = CaptionTokenizer.from_file(tiny_demo / "tokenizer.json")
        return VQADataset(records, tokenizer, image_transform(32, train=train), context_length, train=train, **kwargs)
    return make


def test_training_layout_puts_the_answer_after_the_question(dataset):
    data = dataset(train=True)
    t = data.tokenizer
    batch = collate_vqa([data[i] for i in range(4)])
    for row in range(4):
        tokens, start = batch.tokens[row].tolist(), int(batch.answer_start[row])
        question = t.token_ids(batch.questions[row])
        assert tokens[:start] == [t.bos_id, *question, t.sep_id]
        answer = tokens[start:tokens.index(t.eos_id)]
        assert t.decode(answer) == data.training_answer(row)


def test_evaluation_layout_is_the_prompt_alone(dataset):
    data = dataset(train=False)
    t = data.tokenizer
    sample = data[0]
    start = sample.answer_start
    assert sample.tokens[start - 1] == t.sep_id and (sample.tokens[start:] == t.pad_id).all()
    assert len(sample.answers) == 10


def test_answers_are_drawn_by_annotator_frequency_and_repeat_per_epoch(dataset):
    data = dataset(train=True, seed=3)
    index = next(i for i in range(len(data)) if len(data.answer_choices(i)[0]) > 1)
    answers, counts = data.answer_choices(index)
    draws = Counter(data.training_answer(index, epoch) for epoch in range(2000))
    for answer, count in zip(answers, counts):
        assert draws[answer] / 2000 == pytest.approx(count / sum(counts), abs=0.04)
    assert [data.training_answer(index, e) for e in range(20)] == [data.training_answer(index, e) for e in range(20)]


def test_long_questions_are_cut_keeping_the_answer(dataset):
    data = dataset(train=True, context_length=8)
    t = data.tokenizer
    sample = data[0]
    tokens = sample.tokens.tolist()
    assert len(tokens) == 8 and tokens[0] == t.bos_id and t.eos_id in tokens
    assert tokens[sample.answer_start - 1] == t.sep_id
    assert t.decode(tokens[sample.answer_start:tokens.index(t.eos_id)]) == data.training_answer(0)


def test_a_training_prompt_never_tells_the_length_of_its_answer(dataset):
    # A question cut by the room its drawn answer leaves would be cut shorter before long answers:
    # training could read the answer off the prompt, and evaluation prompts (no answer) would differ.
    train, evaluate = dataset(train=True, context_length=12), dataset(train=False, context_length=12)
    t = train.tokenizer
    long_answer = t.token_ids("a much longer answer")
    for index in range(8):
        record = train.records[index]
        layouts = [train._layout(record, answer) for answer in ([5], long_answer)]
        prompts = {tuple(tokens[:start]) for tokens, start, _ in layouts}
        evaluation = evaluate[index]
        assert prompts == {tuple(evaluation.tokens[:evaluation.answer_start].tolist())}


def test_unreadable_image_fails_or_is_skipped(dataset, tmp_path):
    data = dataset(train=False)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    record = data.records[0]
    data.records[0] = type(record)(**{**record.__dict__, "path": broken})
    with pytest.raises(BadSampleError, match="broken.jpg"):
        data[0]
    data.skip_bad_samples = True
    batch = collate_vqa([data[0], data[1]])
    assert len(batch) == 1 and batch.num_skipped == 1
    assert torch.equal(batch.question_ids, torch.tensor([data.records[1].question_id]))
