"""Training data from several sources: the mixer draws them by weight, the learning-progress rule
moves the weights (with a floor), a resumed mixer draws exactly what the uninterrupted one would
have, and in a real run on two DDP ranks both ranks draw the same sources with the same weights at
every step."""

from __future__ import annotations

import json
import logging
import random

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from mammut.data.demo.scene import sample_scene
from mammut.data import CaptionTokenizer
from mammut.data.demo.web_sources import TINY, near_duplicates, noisy_pairs, write_web_sources
from mammut.data.sampling import ResumableRandomSampler
from mammut.data.source_mixing import SourceMixer
from mammut.learning_progress import LearningProgressSettings, LearningProgressWeights
from mammut.task_weighting import TaskWeighting
from mammut.tasks.pretrain import ImageTextDataModule
from mammut.tasks.pretrain.shard_data import ShardTextDataModule

from distributed import fit_on_two_processes
from tiny_run import Crash, checkpoint_every, run, scalars


def loader(values: range, batch_size: int = 1) -> DataLoader:
    dataset = TensorDataset(torch.tensor(list(values)))
    return DataLoader(dataset, batch_size=batch_size, sampler=ResumableRandomSampler(len(dataset), seed=0),
                      drop_last=True)


def sources(**sizes: int) -> dict[str, DataLoader]:
    """Source ``name`` of ``size`` samples holds the numbers name_index * 1000 + 0 .. size - 1."""
    return {name: loader(range(1000 * i, 1000 * i + size)) for i, (name, size) in enumerate(sizes.items())}


def test_the_mixer_draws_each_source_by_its_weight_within_three_sigma():
    steps = 4000
    mixer = SourceMixer(sources(a=10, b=7, c=3), LearningProgressWeights({"a": 1, "b": 2, "c": 5}, adaptive=False),
                        seed=3, steps_per_epoch=steps)
    drawn = [int(batch[0]) // 1000 for batch in mixer]
    for index, share in enumerate((1 / 8, 2 / 8, 5 / 8)):
        sigma = (share * (1 - share) / steps) ** 0.5
        assert abs(drawn.count(index) / steps - share) < 3 * sigma, index


def test_learning_progress_favours_the_falling_loss_and_the_floor_holds():
    settings = LearningProgressSettings(floor=0.1, warmup=5)
    weights = LearningProgressWeights({"learning": 1, "noise": 1, "learned": 1}, settings=settings)
    assert weights.weights() == pytest.approx({"learning": 1 / 3, "noise": 1 / 3, "learned": 1 / 3})
    generator = torch.Generator().manual_seed(0)
    for step in range(200):
        noise = float(torch.rand((), generator=generator))
        weights.observe({"learning": 5.0 * 0.99 ** step, "noise": 4.5 + noise, "learned": 0.1})
    now = weights.weights()
    assert sum(now.values()) == pytest.approx(1.0)
    assert now["learning"] > 0.6 and now["learning"] > 3 * max(now["noise"], now["learned"])
    assert min(now.values()) >= 0.1 - 1e-12  # the floor
    # One stream making all the progress still leaves the others their floor.
    alone = LearningProgressWeights({"a": 1, "b": 1}, settings=LearningProgressSettings(floor=0.05, warmup=1,
                                                                                        temperature=0.01))
    for step in range(50):
        alone.observe({"a": 10.0 / (step + 1), "b": 1.0})
    assert alone.weights()["b"] == pytest.approx(0.05)


def _observed_run(mixer: SourceMixer, steps: int) -> list[tuple[int, dict]]:
    """Each step's batch and the weights it was drawn with; a source's loss is a fixed function of its
    batch. A new pass starts when an epoch ends, as Lightning's next epoch does."""
    trace = []
    iterator = iter(mixer)
    for _ in range(steps):
        weights = mixer.weighting.weights()
        try:
            batch = int(next(iterator)[0])
        except StopIteration:
            iterator = iter(mixer)
            batch = int(next(iterator)[0])
        trace.append((batch, weights))
        mixer.observe(5.0 / (1 + batch % 1000) if batch < 1000 else 3.0 + (batch % 7) / 10)
    return trace


def _adaptive_mixer() -> SourceMixer:
    settings = LearningProgressSettings(warmup=3, floor=0.05)
    return SourceMixer(sources(falling=40, flat=40), LearningProgressWeights({"falling": 1, "flat": 1},
                                                                             settings=settings), seed=1)


@pytest.mark.parametrize("steps_before", [0, 17, 80])  # mid-epoch, and across the mixer's epoch (80 steps)
def test_a_resumed_mixer_draws_the_same_batches_with_the_same_weights(steps_before):
    whole = _observed_run(_adaptive_mixer(), 120)
    assert {w["falling"] for _, w in whole[60:]} != {0.5}  # the weights moved
    interrupted = _adaptive_mixer()
    before = _observed_run(interrupted, steps_before)
    saved = json.loads(json.dumps(interrupted.state_dict()))  # plain data, as a checkpoint holds it
    resumed = _adaptive_mixer()
    resumed.load_state_dict(saved)
    assert before + _observed_run(resumed, 120 - steps_before) == whole


def test_a_mixer_resumed_on_other_ranks_carries_each_sources_samples_over(caplog):
    def mixer(layout):
        return SourceMixer(sources(a=40, b=40), LearningProgressWeights({"a": 1, "b": 1}, adaptive=False), seed=0,
                           layout=layout)
    saved = mixer((2, 1))
    for _, _batch in zip(range(10), saved):
        pass
    resumed = mixer((1, 1))
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(json.loads(json.dumps(saved.state_dict())))
    # Two ranks had each read these batches; on one rank the same samples are twice its batches.
    assert resumed.batches_read == {name: 2 * read for name, read in saved.batches_read.items()}
    assert sum(saved.batches_read.values()) == 10
    assert "saved with 2 ranks × 1 workers on 1 × 1" in caplog.text


def test_bad_sources_and_settings_are_refused():
    with pytest.raises(ValueError, match="weight of 'b' must be a positive number"):
        LearningProgressWeights({"a": 1, "b": 0})
    with pytest.raises(ValueError, match="floor of 0.5 for each of 2 streams"):
        LearningProgressWeights({"a": 1, "b": 1}, settings=LearningProgressSettings(floor=0.5))
    with pytest.raises(ValueError, match="fast_decay < slow_decay"):
        LearningProgressSettings(fast_decay=0.99, slow_decay=0.9)
    with pytest.raises(ValueError, match=r"sources \['a', 'b'\] but weights for \['a'\]"):
        SourceMixer(sources(a=4, b=4), LearningProgressWeights({"a": 1}))


# Real runs on the tiny demo world, its clean captions beside sources written by the generator.

@pytest.fixture(scope="module")
def noise_source(tiny_demo):
    """41 of the clean training images, each with five captions of eight tokens drawn uniformly from
    the whole vocabulary, one caption drawn per sample: nothing in them is about the image. 41
    images against the clean split's 48 make the sources' shards uneven over two ranks. The demo's
    own flawed sources are written beside it (tiny), for the bad-record test."""
    write_web_sources(tiny_demo, seed=0, image_size=64, **TINY)
    document = json.loads((tiny_demo / "annotations/captions_train.json").read_text())
    images = document["images"][:41]
    tokenizer = CaptionTokenizer.from_file(tiny_demo / "tokenizer.json")
    first = max(tokenizer.special_token_ids.values()) + 1
    rng = random.Random(0)
    annotations = [{"id": 5 * index + k + 1, "image_id": image["id"],
                    "caption": tokenizer.decode([rng.randrange(first, tokenizer.vocab_size) for _ in range(8)])}
                   for index, image in enumerate(images) for k in range(5)]
    folder = tiny_demo / "sources" / "pure_noise"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return tiny_demo


SOURCES = ("--data.train_sources={clean: {annotations: annotations/captions_train.json, images: images/train}, "
           "noise: {annotations: sources/pure_noise/captions.json, images: images/train}}")
ADAPTIVE = [SOURCES, "--data.mixing=adaptive", "--data.adaptive.warmup=10", "--data.adaptive.floor=0.1",
            "--data.adaptive.signal=loss", "--trainer.limit_val_batches=0"]
# target_gain, with the tiny demo's val split standing for a held-out target set
TARGET = ["--data.adaptive.rule=target_gain",
          "--data.adaptive_target={annotations: annotations/captions_val.json, images: images/val, size: 16}"]


@pytest.mark.slow
def test_two_ddp_ranks_draw_the_same_sources_with_the_same_weights_at_every_step(noise_source, tmp_path):
    """Sources of uneven size (48 and 41 images over 2 ranks); the weights move after the warmup.
    The rule is target_gain: each rank probes its own slice of the target set and the gains are
    averaged; the progress rule's means, which every rule keeps, are averaged too and equal."""
    trace = tmp_path / "trace"
    overlay = tmp_path / "trace.yaml"
    overlay.write_text("trainer:\n  callbacks:\n    - class_path: source_trace.SourceTrace\n"
                       f"      init_args: {{folder: {trace}}}\n")
    # The gains differ less between the sources than progress does: a lower temperature moves the weights.
    target = [*TARGET, "--data.adaptive_target.size=8", "--data.adaptive.temperature=0.25"]
    fit_on_two_processes(noise_source, tmp_path, "ddp", *ADAPTIVE, *target, "--trainer.max_steps=30",
                         "--model.warmup_steps=5", "--data.batch_size=4", f"--config={overlay}")
    ranks = [json.loads((trace / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert len(ranks[0]) == 30 and ranks[0] == ranks[1]  # the same source and weights at every step
    assert ranks[0][0]["weights"] == {"clean": 0.5, "noise": 0.5}  # the priors, before the warmup
    moved = [step["weights"]["clean"] for step in ranks[0][20:]]
    assert any(abs(w - 0.5) > 0.05 for w in moved) and all(0.1 - 1e-9 <= w <= 0.9 + 1e-9 for w in moved)  # floor
    assert {step["source"] for step in ranks[0]} == {"clean", "noise"}
    logged = scalars(tmp_path / "pretrain" / "version_0")  # rank 0's TensorBoard log of the weights
    assert logged["train/sources/clean/weight"][-1][1] == pytest.approx(ranks[0][-1]["weights"]["clean"], abs=0.05)


@pytest.mark.slow
def test_target_gain_adds_up_to_the_targets_loss_decrease_and_prefers_the_clean_source(noise_source, tmp_path):
    """Each step's gain is the target's loss before it minus after it, credited to the source drawn:
    over the run the gains add up to the target's loss at the start minus at the end. A step on
    captions of random tokens helps a target of real captions less than a step on real ones (at a
    constant learning rate, so that the schedule does not shrink later gains)."""
    ends = tmp_path / "ends.json"
    overlay = tmp_path / "ends.yaml"
    overlay.write_text("trainer:\n  callbacks:\n    - class_path: source_trace.TargetLossAtEnds\n"
                       f"      init_args: {{path: {ends}}}\n")
    run("fit", noise_source, tmp_path, *ADAPTIVE, *TARGET, "--trainer.max_steps=24", "--model.warmup_steps=4",
        "--model.min_lr_ratio=1.0", "--data.adaptive.warmup=4", f"--config={overlay}",
        "--trainer.logger.init_args.version=gain")
    logged = scalars(tmp_path / "pretrain" / "gain")
    gains = {name: [value for _, value in logged[f"train/sources/{name}/gain"]] for name in ("clean", "noise")}
    assert len(gains["clean"]) + len(gains["noise"]) == 24  # every step measured, credited to one source
    first, last = json.loads(ends.read_text())
    assert sum(gains["clean"]) + sum(gains["noise"]) == pytest.approx(first - last, abs=1e-4)
    # Gains shrink as training goes on: a clean step right after a noise step must beat that trend.
    by_step = {name: dict(logged[f"train/sources/{name}/gain"]) for name in ("clean", "noise")}
    pairs = [(gain, by_step["noise"][step - 1]) for step, gain in by_step["clean"].items()
             if step - 1 in by_step["noise"]]
    assert len(pairs) >= 3 and all(clean > noise for clean, noise in pairs), pairs
    weights = logged["train/sources/clean/weight"]
    assert weights[0][1] == pytest.approx(0.5) and weights[-1][1] > 0.5


def test_target_gain_refuses_steps_of_several_batches(noise_source, tmp_path):
    with pytest.raises(ValueError, match="accumulate_grad_batches=2 makes a step of several batches"):
        run("fit", noise_source, tmp_path, *ADAPTIVE, *TARGET, "--trainer.max_steps=2",
            "--trainer.accumulate_grad_batches=2")


def test_target_gain_weighs_sources_by_their_gain_and_resumes(caplog):
    settings = LearningProgressSettings(rule="target_gain", warmup=3, floor=0.05)
    weights = LearningProgressWeights({"helps": 1, "idle": 1, "harms": 1}, settings=settings)
    for step in range(3):
        weights.observe_gain("helps", 0.02, step=3 * step)
        weights.observe_gain("idle", 0.0, step=3 * step + 1)
        assert weights.weights() == pytest.approx({"helps": 1 / 3, "idle": 1 / 3, "harms": 1 / 3})  # warming up
        weights.observe_gain("harms", -0.01, step=3 * step + 2)
    now = weights.weights()
    assert now["helps"] > now["idle"] > now["harms"] >= 0.05 - 1e-12
    # Scale-free: ten times the gains and losses give the same weights.
    scaled = LearningProgressWeights({"helps": 1, "idle": 1, "harms": 1}, settings=settings)
    for step in range(3):
        for offset, (name, gain) in enumerate((("helps", 0.2), ("idle", 0.0), ("harms", -0.1))):
            scaled.observe_gain(name, gain, step=3 * step + offset)
    assert scaled.weights() == pytest.approx(now)
    restored = LearningProgressWeights({"helps": 1, "idle": 1, "harms": 1}, settings=settings)
    restored.load_state_dict(json.loads(json.dumps(weights.state_dict())))
    assert restored.weights() == now
    # A non-finite gain (an overflowed target loss) is left out and said, not averaged in.
    with caplog.at_level(logging.WARNING):
        weights.observe_gain("harms", float("nan"), step=9)
    assert weights.weights() == now and "source harms: a non-finite gain" in caplog.text
    with pytest.raises(ValueError, match="rule must be one of"):
        LearningProgressSettings(rule="bandit")
    with pytest.raises(ValueError, match="rule 'target_gain' weighs data sources"):
        TaskWeighting({"pretrain": 1.0, "vqa": 1.0}, "adaptive", adaptive=settings)
    TaskWeighting({"pretrain": 1.0, "vqa": 1.0}, "loss_balanced", adaptive=settings)  # the rule is not used there
    with pytest.raises(ValueError, match="target_gain measures each source's steps on a target set"):
        SourceMixer(sources(a=4, b=4), LearningProgressWeights({"a": 1, "b": 1}, settings=settings))


def test_adaptive_task_weighting_keeps_the_sum_and_favours_the_task_still_learning():
    weighting = TaskWeighting({"pretrain": 1.0, "vqa": 2.0}, "adaptive", adaptive=LearningProgressSettings(warmup=5))
    for step in range(100):
        weighting.update({"pretrain": 3.0, "vqa": 4.0 * 0.98 ** step})
    weights = weighting.weights()
    assert sum(weights.values()) == pytest.approx(3.0) and weights["vqa"] > 2.0 > weights["pretrain"]
    restored = TaskWeighting({"pretrain": 1.0, "vqa": 2.0}, "adaptive", adaptive=LearningProgressSettings(warmup=5))
    restored.load_state_dict(json.loads(json.dumps(weighting.state_dict())))
    assert restored.weights() == weights


@pytest.mark.parametrize("arguments,message", [
    (["--data.mixing=adaptive"], "weighs data.train_sources, and none are set"),
    (["--data.train_sources={clean/1: {annotations: a.json, images: i}}"], "source name 'clean/1'"),
    (["--data.train_sources={clean: {annotations: a.json}}"], "data.train_sources.clean: .*images"),
    ([SOURCES, "--data.mixing=adaptive", "--data.adaptive={rule: target_gain}"], "name one in data.adaptive_target"),
    (["--data.adaptive_target={annotations: a.json, images: i, size: 1}"], "at least 2 images"),
])
def test_bad_source_settings_are_refused_with_the_setting_named(tiny_demo, tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        ImageTextDataModule(root=str(tiny_demo), **_parsed(arguments))


def test_a_target_set_too_small_for_its_batch_is_refused_naming_its_file(noise_source):
    target = {"annotations": "annotations/captions_val.json", "images": "images/val", "size": 100}
    data = ImageTextDataModule(root=str(noise_source), **_parsed([SOURCES, "--data.mixing=adaptive"]),
                               adaptive={"rule": "target_gain"}, adaptive_target=target)
    data.connect(image_size=32, context_length=24)
    with pytest.raises(ValueError, match=r"captions_val.json\): 24 usable images, fewer than size 100"):
        data.target_batch()


def _parsed(arguments: list[str]) -> dict:
    """``--data.key=yaml`` arguments as keyword arguments."""
    return {argument.split("=", 1)[0].removeprefix("--data."): yaml.safe_load(argument.split("=", 1)[1])
            for argument in arguments}


def test_a_bad_record_of_a_source_names_its_file_or_is_counted(noise_source, tmp_path):
    """An image of the noisy source without a caption: an error naming the source's file, or with
    skip_bad_samples one skipped record of the training split."""
    document = json.loads((noise_source / "sources/noisy/captions.json").read_text())
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] != document["images"][0]["id"]]
    broken = tmp_path / "captions.json"
    broken.write_text(json.dumps(document))
    sources = {"clean": {"annotations": "annotations/captions_train.json", "images": "images/train"},
               "noisy": {"annotations": str(broken), "images": str(noise_source / "sources/noisy/images")}}
    with pytest.raises(ValueError, match=f"{broken}: image id {document['images'][0]['id']} .*no captions"):
        ImageTextDataModule(root=str(noise_source), train_sources=sources).setup("fit")
    data = ImageTextDataModule(root=str(noise_source), train_sources=sources, skip_bad_samples=True)
    data.setup("fit")
    assert data.records_skipped["train"] == 1 and len(data.source_records["noisy"]) == TINY["noisy_images"] - 1


@pytest.mark.slow
def test_a_run_on_sources_resumed_mid_epoch_draws_the_same_sources_with_the_same_weights(noise_source, tmp_path):
    common = [*ADAPTIVE, "--trainer.max_steps=12", "--data.adaptive.warmup=2", "--model.warmup_steps=2"]
    run("fit", noise_source, tmp_path, *common, "--trainer.logger.init_args.version=whole")
    with pytest.raises(Crash):
        run("fit", noise_source, tmp_path, *common, "--trainer.logger.init_args.version=part",
            *checkpoint_every(tmp_path, 1, crash_at=6))
    last = tmp_path / "pretrain" / "part" / "checkpoints" / "last.ckpt"
    run("fit", noise_source, tmp_path, *common, "--trainer.logger.init_args.version=resumed", f"--ckpt_path={last}")
    whole, resumed = scalars(tmp_path / "pretrain" / "whole"), scalars(tmp_path / "pretrain" / "resumed")
    assert {value for _, value in whole["train/sources/clean/weight"]} != {0.5}  # the weights moved
    for tag in ("train/sources/clean/weight", "train/sources/clean/loss", "train/sources/noise/loss"):
        after = [(step, value) for step, value in whole[tag] if step > 6]
        assert after and resumed[tag] == pytest.approx(after, rel=1e-5), tag


def test_the_demo_alt_text_has_the_stated_shares_of_mismatched_and_cut_captions():
    rng = random.Random(0)
    scenes = [sample_scene(rng, 64) for _ in range(2000)]
    pairs = noisy_pairs(scenes, random.Random(1), noisy_share=0.4, cut_share=0.2)
    kinds = [pair["kind"] for pair in pairs]
    assert abs(kinds.count("other image") / 2000 - 0.4) < 0.04
    assert abs(kinds.count("cut") / (2000 - kinds.count("other image")) - 0.2) < 0.04
    assert all(len(pair["caption"].split()) >= 2 for pair in pairs)
    copies = near_duplicates(random.Random(2), 64, scenes=4, images=40)
    assert len({(c.objects[0].shape, c.objects[0].colour) for c in copies}) <= 4
    assert all(len(c.objects) == 1 and c.objects[0].size == "large" for c in copies)
    assert len({(c.objects[0].cx, c.objects[0].cy) for c in copies}) == 40  # each copy shifted


def test_the_demo_target_set_is_held_out_clean_pairs_one_caption_each(noise_source):
    target = json.loads((noise_source / "sources/target/captions.json").read_text())
    train = json.loads((noise_source / "annotations/captions_train.json").read_text())
    assert len(target["images"]) == len(target["annotations"]) == TINY["target_images"]
    assert {image["id"] for image in target["images"]}.isdisjoint(image["id"] for image in train["images"])
    assert all((noise_source / "sources/target/images" / image["file_name"]).is_file() for image in target["images"])


def test_shard_sources_are_their_patterns_and_bad_settings_are_refused(tiny_demo):
    """Shard sources are the '::' patterns of train_shards (tests/test_shards_resume.py mixes them)."""
    with pytest.raises(ValueError, match="data.train_sources is for COCO-format sources"):
        ShardTextDataModule(root=str(tiny_demo), train_sources={"a": {"annotations": "a.json", "images": "i"}})
    with pytest.raises(ValueError, match="give each its starting weight in data.source_weights"):
        ShardTextDataModule(root=str(tiny_demo), mixing="adaptive")
    with pytest.raises(ValueError, match="data.source_names: the source name 'a/b'"):
        ShardTextDataModule(root=str(tiny_demo), source_weights=[1], source_names=["a/b"])
    with pytest.raises(ValueError, match="name one in data.adaptive_target"):
        ShardTextDataModule(root=str(tiny_demo), source_weights=[1], mixing="adaptive", adaptive={"rule": "target_gain"})
    with pytest.raises(ValueError, match="1 names for 2 '::'-separated patterns"):
        ShardTextDataModule(root=str(tiny_demo), train_shards="a/*.tar::b/*.tar", source_weights=[1, 2],
                            source_names=["only"])
    with pytest.raises(ValueError, match="without weights the '::'-separated patterns of data.train_shards are one"):
        ShardTextDataModule(root=str(tiny_demo), train_shards="a/*.tar::b/*.tar", source_names=["a", "b"])
    with pytest.raises(ValueError, match="3 weights for 2 '::'-separated patterns"):
        ShardTextDataModule(root=str(tiny_demo), train_shards="a/*.tar::b/*.tar", source_weights=[1, 2, 3])
