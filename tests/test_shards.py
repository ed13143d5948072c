"""Tar shards in img2dataset's layout, written by `python -m mammut.data.write_shards` from the tiny
demo world: the layout itself, shard lists, how streams share out the samples, and bad data."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
from itertools import islice, product

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from jsonargparse import ArgumentParser

from mammut.data import CaptionTokenizer, image_transform, read_coco_captions
from mammut.data.errors import BadSampleError, DataFormatError
from mammut.data.shard_dataset import ShardCaptionDataset
from mammut.data.shard_files import expand_shard_patterns, parquet_captions, stats_sample_count
from mammut.data.shard_reader import read_shard
from mammut.data.shard_streams import ShardSource, Stream, stream_entries, stream_pieces
from mammut.tasks.pretrain import ShardTextDataModule

from shard_runs import shard_keys, write_demo_shards


@pytest.fixture(scope="module")
def shards(tiny_demo, tmp_path_factory):
    """The tiny demo's 48 training images in uneven shards of 20, 20 and 8 (train/), and its 24
    val images as a second set numbered from shard 10 (more/)."""
    root = tmp_path_factory.mktemp("shards")
    write_demo_shards(tiny_demo, root / "train", samples_per_shard=20)
    write_demo_shards(tiny_demo, root / "more", samples_per_shard=10, split="val", first_shard=10)
    return root


def dataset(sources, tokenizer, batches_per_rank, batch_size=4, **settings) -> ShardCaptionDataset:
    return ShardCaptionDataset(sources, tokenizer, image_transform(16, train=True), 24, batch_size, batches_per_rank,
                               shuffle_buffer=settings.pop("shuffle_buffer", 8), **settings)


def source(folder, pattern="*.tar", name="train", weight=1.0) -> ShardSource:
    shards = expand_shard_patterns(str(folder / pattern))[0]
    return ShardSource(name, tuple(shards), weight, tuple(stats_sample_count(s) for s in shards))


@pytest.fixture(scope="module")
def tokenizer(tiny_demo):
    return CaptionTokenizer.from_file(tiny_demo / "tokenizer.json")


def test_the_command_writes_img2dataset_layout(shards, tiny_demo):
    folder = shards / "train"
    assert sorted(p.name for p in folder.iterdir()) == [
        f"0000{i}{suffix}" for i in range(3) for suffix in (".parquet", ".tar", "_stats.json")]
    records = {r.image_id: r for r in read_coco_captions(tiny_demo / "annotations/captions_train.json",
                                                          tiny_demo / "images/train")[0]}
    # webdataset's own reader, as open_clip reads such shards
    samples = list(wds.WebDataset(str(folder / "{00000..00002}.tar"), shardshuffle=False))
    assert [len(shard_keys(folder / f"0000{i}.tar")) for i in range(3)] == [20, 20, 8]
    assert [s["__key__"] for s in samples[:2]] == ["0000000", "0000001"] and samples[-1]["__key__"] == "0000207"
    for sample in samples:
        assert set(sample) >= {"jpg", "txt", "json"}
        meta = json.loads(sample["json"])
        record = records[meta["image_id"]]
        assert sample["jpg"] == record.path.read_bytes()  # the image file, unchanged
        assert meta["sha256"] == hashlib.sha256(sample["jpg"]).hexdigest()
        assert sample["txt"].decode() == meta["caption"] == record.captions[0]
        assert meta["captions"] == list(record.captions) and meta["key"] == sample["__key__"]
        assert meta["status"] == "success" and (meta["width"], meta["height"]) == (64, 64)
    table = pq.read_table(folder / "00001.parquet")
    assert {"url", "caption", "key", "status", "width", "height", "sha256"} <= set(table.column_names)
    assert table.column("key").to_pylist() == shard_keys(folder / "00001.tar")
    assert json.loads((folder / "00002_stats.json").read_text())["successes"] == 8
    assert len(parquet_captions([str(folder / "00000.tar")], "captions", 10_000)) == 100  # 5 per image
    # a second set continues the numbering, so keys stay unique across both
    assert shard_keys(shards / "more" / "00011.tar")[0] == "000110"


def test_shard_lists_from_braces_globs_several_patterns_and_pipes(shards):
    train, more = shards / "train", shards / "more"
    assert expand_shard_patterns(f"{train}/{{00000..00001}}.tar") == [[f"{train}/00000.tar", f"{train}/00001.tar"]]
    assert expand_shard_patterns(f"{train}/*.tar::{more}/0001[0-1].tar") == [
        [f"{train}/0000{i}.tar" for i in range(3)], [f"{more}/00010.tar", f"{more}/00011.tar"]]
    piped = expand_shard_patterns(f"pipe:cat {train}/{{00000..00002}}.tar")[0]
    assert piped == [f"pipe:cat {train}/0000{i}.tar" for i in range(3)]
    assert [e.key for e in read_shard(piped[2])] == shard_keys(train / "00002.tar")
    with pytest.raises(DataFormatError, match="no file matches"):
        expand_shard_patterns(f"{train}/*.tar::{more}/*.tgz")


@pytest.mark.parametrize("with_counts", [True, False], ids=["stats counts", "no stats"])
def test_streams_share_out_uneven_shards_without_overlap(shards, with_counts):
    """3 shards of 20, 20 and 8 samples among 3 ranks × 2 workers (more streams than shards): every
    sample goes to exactly one stream; with the stats files' counts the shares are equal."""
    train = source(shards / "train")
    counts = train.sample_counts if with_counts else (None,) * 3
    order = [2, 0, 1]
    shares = []
    for rank, worker in product(range(3), range(2)):
        pieces = stream_pieces(order, counts, Stream(rank, 3, worker, 2))
        shares.append([e.key for shard, positions in pieces for e in read_shard(train.shards[shard], positions)])
    keys = [key for share in shares for key in share]
    assert sorted(keys) == sorted(key for shard in train.shards for key in shard_keys(shard))
    if with_counts:
        assert [len(share) for share in shares] == [8] * 6


def test_resampled_streams_differ_and_follow_the_weights(shards):
    train, more = source(shards / "train", weight=1.0), source(shards / "more", name="more", weight=3.0)
    firsts = []
    for stream in (Stream(0, 2, 0, 2), Stream(0, 2, 1, 2), Stream(1, 2, 0, 2)):
        entries = list(islice(stream_entries([train, more], stream, 0, 0, resampled=True, shuffle_buffer=4), 400))
        firsts.append([e.key for e in entries[:20]])
        from_more = sum(e.key.startswith("0001") for e in entries) / len(entries)
        assert 0.68 < from_more < 0.82  # weight 3 of 4
    assert firsts[0] != firsts[1] and firsts[0] != firsts[2] and firsts[1] != firsts[2]
    again = list(islice(stream_entries([train, more], Stream(0, 2, 0, 2), 0, 0, True, 4), 20))
    assert [e.key for e in again] == firsts[0]  # a stream is rebuilt from (seed, epoch, stream) alone


@pytest.fixture(scope="module")
def bad_shards(shards, tmp_path_factory):
    """Four shards, each bad in one way, beside good ones: an image that does not decode and a
    sample without its caption (00000), a tar cut inside a sample (00001), one cut between samples
    so that it holds fewer than its stats file says (00002); and 00003, which is missing."""
    folder = tmp_path_factory.mktemp("bad")
    good = shards / "train"
    with wds.TarWriter(str(folder / "00000.tar"), encoder=False) as tar:
        for sample in islice(wds.WebDataset(str(good / "00000.tar"), shardshuffle=False), 6):
            files = {"__key__": sample["__key__"], "jpg": sample["jpg"], "txt": sample["txt"], "json": sample["json"]}
            if sample["__key__"] == "0000001":
                files["jpg"] = b"<html>404 not found</html>"
            if sample["__key__"] == "0000003":
                del files["txt"]
            tar.write(files)
    with tarfile.open(good / "00001.tar") as tar:
        members = tar.getmembers()  # jpg, json, txt of each sample
    (folder / "00001.tar").write_bytes((good / "00001.tar").read_bytes()[:members[16].offset_data + 100])
    with tarfile.open(good / "00002.tar") as tar:
        members = tar.getmembers()
    (folder / "00002.tar").write_bytes((good / "00002.tar").read_bytes()[:members[12].offset])  # 4 whole samples
    for name in ("00001", "00002"):
        shutil.copy(good / f"{name}_stats.json", folder / f"{name}_stats.json")
    return folder


def test_bad_samples_and_shards_are_counted_skips_naming_shard_and_key(bad_shards, tokenizer, caplog):
    shards = tuple(str(bad_shards / f"0000{i}.tar") for i in range(4))
    bad = ShardSource("bad", shards, 1.0, tuple(stats_sample_count(s) for s in shards))
    # 6 + 5 + 4 samples and 3 shard problems: an epoch of 6 batches of 3 reads each once
    data = dataset([bad], tokenizer, batches_per_rank=6, batch_size=3, skip_bad_samples=True)
    with caplog.at_level(logging.WARNING):
        samples = list(data)
    assert len(samples) == 18
    skipped = [r.getMessage() for r in caplog.records if "skipping bad sample" in r.getMessage()]
    assert sum(s is None for s in samples) == len(skipped) == 5
    text = "\n".join(skipped)
    assert f"{shards[0]}, key 0000001: cannot decode image" in text
    assert f"{shards[0]}, key 0000003" in text and "no caption" in text
    assert f"{shards[1]}, key 0000105: shard is truncated" in text
    assert f"{shards[2]}: shard ends after 4 of the 8 samples its stats file lists" in text
    assert f"{shards[3]}: cannot open shard" in text and "No such file" in text

    # Without skip_bad_samples, the first bad one stops the pass, named.
    with pytest.raises(BadSampleError, match=r"0000[0-3]\.tar"):
        list(dataset([bad], tokenizer, batches_per_rank=6, batch_size=3, skip_bad_samples=False))


def test_a_source_with_no_readable_shard_stops_with_its_name(tmp_path, tokenizer):
    """Skipping bad samples does not turn a source whose shards are all gone into an endless run of skips."""
    gone = ShardSource("gone", (str(tmp_path / "00000.tar"), str(tmp_path / "00001.tar")))
    with pytest.raises(BadSampleError, match=r"samples were all bad, the last one .*0000[01]\.tar: cannot open"):
        list(dataset([gone], tokenizer, batches_per_rank=60, skip_bad_samples=True))


def test_data_module_reads_patterns_weights_and_baseline(shards, tiny_demo):
    data = ShardTextDataModule(root=str(shards), tokenizer=str(tiny_demo / "tokenizer.json"),
                               train_shards="train/{00000..00002}.tar::more/*.tar", source_weights=[1, 3],
                               train_num_samples=40, batch_size=4, num_workers=0, image_size=16, context_length=24,
                               val_annotations=str(tiny_demo / "annotations/captions_val.json"),
                               val_images=str(tiny_demo / "images/val"), test_annotations=None,
                               val_zeroshot={"demo": {"path": str(tiny_demo / "classification/val"),
                                                      "classnames": str(tiny_demo / "classification/classnames.txt"),
                                                      "templates": str(tiny_demo / "classification/"
                                                                       "zeroshot_classification_templates.txt")}})
    sources = data.sources()
    assert [len(s.shards) for s in sources] == [3, 3] and [s.weight for s in sources] == [1.0, 3.0]
    assert sources[0].sample_counts == (20, 20, 8)
    data.setup("fit")
    assert "train" not in data.records and len(data.records["val"]) == 24
    inputs = data.task_inputs("pretrain")
    assert len(inputs.train_captions) == 48 + 24  # the .txt captions of the parquet files
    assert list(inputs.zero_shot) == ["demo"]  # validation classifies the zero-shot sets it names
    loader = data.train_dataloader()
    assert len(loader) == 10
    assert sum(len(batch) for batch in loader) == 40
    # a checkpoint holds every argument the CLI offers, which a resumed run's data settings come from
    parser = ArgumentParser()
    parser.add_class_arguments(ShardTextDataModule, "data")
    assert set(data.hparams) == set(vars(parser.get_defaults().data))
    with pytest.raises(ValueError, match="2 weights for 1"):
        ShardTextDataModule(root=str(shards), tokenizer=str(tiny_demo / "tokenizer.json"),
                            train_shards="train/*.tar", source_weights=[1, 2]).sources()
