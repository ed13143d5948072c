"""MSR-VTT captions, MSRVTT-QA and MSVD-QA, read from files in their published schemas."""

from __future__ import annotations

import json
import logging

import pytest

from mammut.data.errors import DataFormatError
from mammut.data.video_records import read_msrvtt_captions, read_msvd_mapping, read_video_qa

# As in MSR-VTT's train_val_videodatainfo.json: every field of a video entry, ids out of order.
MSRVTT = {
    "info": {"contributor": "Microsoft MSM group", "year": "2016"},
    "videos": [
        {"category": 9, "url": "https://www.youtube.com/watch?v=9lZi22qLlEo", "video_id": "video2",
         "start time": 137.72, "end time": 149.44, "split": "train", "id": 2},
        {"category": 16, "url": "https://www.youtube.com/watch?v=w4JM08PDEng", "video_id": "video0",
         "start time": 184.33, "end time": 206.89, "split": "train", "id": 0},
        {"category": 9, "url": "https://www.youtube.com/watch?v=Zp9SXKVOFsk", "video_id": "video6513",
         "start time": 10.0, "end time": 22.5, "split": "validate", "id": 6513},
    ],
    "sentences": [
        {"caption": "a cartoon animals runs through an ice cave in a video game", "video_id": "video2", "sen_id": 0},
        {"caption": "a car is shown", "video_id": "video0", "sen_id": 1},
        {"caption": "a man drives a red car", "video_id": "video0", "sen_id": 2},
        {"caption": "people sing on stage", "video_id": "video6513", "sen_id": 3},
    ],
}


def write(path, content):
    path.write_text(json.dumps(content) if not isinstance(content, str) else content)
    return path


def test_msrvtt_captions_of_one_split_in_id_order(tmp_path):
    file = write(tmp_path / "train_val_videodatainfo.json", MSRVTT)
    records, skipped = read_msrvtt_captions(file, tmp_path / "videos", "train")
    assert skipped == 0
    assert [(r.image_id, r.path.name) for r in records] == [(0, "video0.mp4"), (2, "video2.mp4")]
    assert records[0].captions == ("a car is shown", "a man drives a red car")
    validate, _ = read_msrvtt_captions(file, tmp_path / "videos", "validate", video_pattern="clips/{video}.webm")
    assert [(r.image_id, str(r.path.relative_to(tmp_path))) for r in validate] == [(6513, "videos/clips/video6513.webm")]


def test_msrvtt_errors_name_the_file_and_video(tmp_path, caplog):
    broken = json.loads(json.dumps(MSRVTT))
    broken["sentences"][1]["caption"] = " "
    broken["sentences"][2]["caption"] = ""
    file = write(tmp_path / "broken.json", broken)
    with pytest.raises(DataFormatError, match=r"broken.json: sentences\[1\] \(video 'video0'\): empty caption"):
        read_msrvtt_captions(file, tmp_path, "train")
    with caplog.at_level(logging.WARNING):
        records, skipped = read_msrvtt_captions(file, tmp_path, "train", skip_bad_samples=True)
    # Both captions of video0 skipped, then video0 itself, left without a caption.
    assert [r.image_id for r in records] == [2] and skipped == 3
    assert "video 'video0': no caption" in caplog.text
    with pytest.raises(DataFormatError, match=r"no video of split 'val'; its splits are \['train', 'validate'\]"):
        read_msrvtt_captions(write(tmp_path / "ok.json", MSRVTT), tmp_path, "val")
    duplicated = json.loads(json.dumps(MSRVTT))
    duplicated["videos"][2]["id"] = 2
    with pytest.raises(DataFormatError, match="video 'video6513': duplicate video_id, or id 2 used twice"):
        read_msrvtt_captions(write(tmp_path / "dup.json", duplicated), tmp_path, "train")


def test_msrvtt_qa_maps_numeric_video_ids_to_msrvtt_names(tmp_path):
    file = write(tmp_path / "train_qa.json", [
        {"answer": "cartoon", "id": 1, "question": "what is a cartoon doing?", "video_id": 2},
        {"answer": "man", "id": 0, "question": "who drives a red car?", "video_id": 0},
    ])
    records, skipped = read_video_qa(file, tmp_path / "videos")
    assert skipped == 0
    assert [(r.question_id, r.image_id, r.path.name, r.answers) for r in records] == [
        (0, 0, "video0.mp4", ("man",)), (1, 2, "video2.mp4", ("cartoon",))]
    assert records[0].question == "who drives a red car?" and records[0].multiple_choice_answer == "man"


def test_msvd_qa_finds_clips_through_youtube_mapping(tmp_path):
    mapping = write(tmp_path / "youtube_mapping.txt", "-4wsuPCjDBc_5_15 vid1\n-7KMZQEsJW4_205_208 vid2\n")
    file = write(tmp_path / "val_qa.json", [{"answer": "dog", "id": 30933, "question": "what is playing?", "video_id": 2}])
    records, _ = read_video_qa(file, tmp_path / "YouTubeClips", "{video}.avi", mapping_file=mapping)
    assert [(r.image_id, r.path.name) for r in records] == [(2, "-7KMZQEsJW4_205_208.avi")]
    assert read_msvd_mapping(mapping) == {1: "-4wsuPCjDBc_5_15", 2: "-7KMZQEsJW4_205_208"}
    unmapped = write(tmp_path / "test_qa.json", [{"answer": "dog", "id": 5, "question": "what?", "video_id": 9}])
    with pytest.raises(DataFormatError, match=r"test_qa.json: question id 5: video vid9 is not in .*youtube_mapping.txt"):
        read_video_qa(unmapped, tmp_path, mapping_file=mapping)
    with pytest.raises(DataFormatError, match=r"bad_mapping.txt: line 2: expected '<clip name> vid<number>'"):
        read_msvd_mapping(write(tmp_path / "bad_mapping.txt", "abc vid1\nabc 7\n"))


def test_video_qa_errors_name_the_file_and_question(tmp_path):
    file = write(tmp_path / "qa.json", [{"answer": "", "id": 3, "question": "what moves?", "video_id": 1},
                                        {"answer": "left", "id": 4, "question": "which way?", "video_id": 1}])
    with pytest.raises(DataFormatError, match="qa.json: question id 3: empty answer"):
        read_video_qa(file, tmp_path)
    records, skipped = read_video_qa(file, tmp_path, skip_bad_samples=True)
    assert [r.question_id for r in records] == [4] and skipped == 1
    with pytest.raises(DataFormatError, match=r"qa2.json: question id 4: 'video_id' must be int, got 'video1'"):
        read_video_qa(write(tmp_path / "qa2.json", [{"answer": "a", "id": 4, "question": "q", "video_id": "video1"}]),
                      tmp_path)
    with pytest.raises(DataFormatError, match="expected a JSON list of questions"):
        read_video_qa(write(tmp_path / "qa3.json", {"questions": []}), tmp_path)
