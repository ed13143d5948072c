"""`make results`: the chain runs its stages with the real CLI, records what each measured, does
not run a finished stage again, resumes a stopped one, and writes the results file from them."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from mammut.results.__main__ import main as results_main
from mammut.results.report import percent_or_number, results_markdown
from mammut.results.runner import ChainRunner, StageResult
from mammut.results.stages import ALL_STAGES, CHAIN, STUDIES, Stage, select
from torch.utils.tensorboard import SummaryWriter
from mammut.run_logs import final_values

from conftest import REPO
from tiny_run import TINY_MODEL, data_arguments


def chain(tiny_demo, runs, *stages: str, more: tuple[str, ...] = ()) -> int:
    quick = [*TINY_MODEL, *data_arguments(tiny_demo, joint=False), "--trainer.precision=32-true",
             "--trainer.enable_progress_bar=false", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
             "--trainer.log_every_n_steps=1", *more]
    return results_main(["--stages", *stages, "--runs", str(runs), "--records", str(runs / "records"),
                         "--out", str(runs / "results.md"), "--", *quick])


def record(runs, stage: str) -> dict:
    return json.loads((runs / "records" / f"{stage}.json").read_text())


@pytest.fixture(scope="module")
def finished(tiny_demo, tmp_path_factory):
    """The chain's first two stages, pretraining and VQA from its checkpoint, run to the end."""
    runs = tmp_path_factory.mktemp("results")
    os.chdir(REPO)  # the recipes' paths are relative to the repository, as under `make results`
    assert chain(tiny_demo, runs, "vqa") == 0
    return runs


@pytest.mark.slow
def test_each_stage_records_its_final_validation_and_command(finished):
    pretrain, vqa = record(finished, "pretrain"), record(finished, "vqa")
    logged = final_values(finished / "vqa" / "version_0")
    assert vqa["metrics"]["vqa/accuracy"] == logged["val/vqa/accuracy"][1]
    assert vqa["baselines"]["vqa/accuracy"] == logged["val_baseline/vqa/accuracy"][1]
    assert vqa["step"] == logged["val/vqa/accuracy"][0] and vqa["minutes"] > 0 and vqa["cpu_minutes"] > 0
    assert "pretrain/image_to_text/R@1" in pretrain["metrics"]
    # VQA started from the pretraining stage's final checkpoint, and the command says so as a user types it.
    assert vqa["command"].startswith("mammut fit --config configs/finetune_vqa.yaml --model.init_from=")
    assert vqa["command"].endswith(str(finished / "pretrain" / "version_0" / "checkpoints" / "last.ckpt"))


@pytest.mark.slow
def test_the_results_file_shows_every_stage_done_or_not(finished):
    text = (finished / "results.md").read_text()
    vqa = record(finished, "vqa")
    accuracy = percent_or_number("vqa/accuracy", vqa["metrics"]["vqa/accuracy"])
    baseline = percent_or_number("vqa/accuracy", vqa["baselines"]["vqa/accuracy"])
    assert f"VQA accuracy {accuracy} ({baseline})" in text
    assert f"2 of {len(CHAIN)} runs finished" in text
    assert "| open-vocabulary detection (`make finetune-detection`) | not run yet |" in text
    assert vqa["machine"] in text and vqa["command"] in text


@pytest.mark.slow
def test_a_finished_stage_is_not_run_again_and_a_stopped_one_resumes(finished, tiny_demo):
    attempts = lambda stage: json.loads((finished / stage / "attempts.json").read_text())  # noqa: E731
    (finished / "records" / "vqa.json").unlink()  # as if the run had been stopped after its last save
    assert chain(tiny_demo, finished, "vqa") == 0
    assert len(attempts("pretrain")) == 1
    assert [a["resumed"] for a in attempts("vqa")] == [False, True]
    assert (finished / "records" / "vqa.json").exists()


def test_a_stage_whose_start_checkpoint_is_elsewhere_asks_for_redo_which_forgets_its_followers(tmp_path):
    """Records outlive the runs (another machine, a fresh clone): a fine-tuning stage whose pretraining
    checkpoint is gone says how to run the two again; --redo forgets the stage and every stage after it."""
    records = tmp_path / "records"
    records.mkdir()
    for stage in ("pretrain", "vqa", "detection_scratch"):
        (records / f"{stage}.json").write_text(json.dumps(dict(
            name=stage, command="mammut fit", minutes=1.0, finished="2026-12-06T10:00+00:00", metrics={"a": 0.5},
            baselines={}, step=10, machine="another machine")))
    runner = ChainRunner(tmp_path / "runs", records)
    by_name = {stage.name: stage for stage in CHAIN}
    with pytest.raises(RuntimeError, match="not on this machine.*on another machine.*--redo pretrain"):
        runner.run(by_name["video_qa"], by_name["pretrain"])
    (tmp_path / "runs" / "vqa" / "version_0").mkdir(parents=True)
    assert runner.forget(["pretrain"]) == [stage.name for stage in ALL_STAGES if stage.name == "pretrain"
                                           or stage.init_from == "pretrain"]
    assert sorted(path.name for path in records.iterdir()) == ["detection_scratch.json"]
    assert not (tmp_path / "runs" / "vqa").exists()


@pytest.mark.slow
def test_a_failing_stage_stops_the_chain_and_names_itself(tiny_demo, tmp_path, capsys, monkeypatch):
    os.chdir(REPO)
    monkeypatch.setattr(ChainRunner, "MAMMUT", [sys.executable, "-c", "import sys; sys.exit(2)"])  # a run that fails
    assert chain(tiny_demo, tmp_path, "pretrain") == 1
    assert "stage 'pretrain' stopped with exit status" in capsys.readouterr().err
    assert "| pretraining (`make pretrain`) | not run yet |" in (tmp_path / "results.md").read_text()


def test_stage_selection_brings_the_stages_a_run_starts_from():
    assert [stage.name for stage in select(["video_qa"])] == ["pretrain", "video_qa"]
    assert [stage.name for stage in select(None)] == [stage.name for stage in CHAIN]
    with pytest.raises(ValueError, match="unknown stage"):
        select(["vqa_from_nowhere"])


@pytest.mark.slow
def test_redo_runs_what_it_forgets_and_refuses_write_only(tiny_demo, tmp_path, capsys, monkeypatch):
    os.chdir(REPO)
    monkeypatch.setattr(ChainRunner, "MAMMUT", [sys.executable, "-c", "import sys; sys.exit(2)"])  # a run that fails
    arguments = ["--runs", str(tmp_path), "--records", str(tmp_path / "records"), "--out", str(tmp_path / "results.md")]
    # multitask starts from nothing; pretraining, forgotten, is run again first (and here fails).
    assert results_main(["--stages", "multitask", "--redo", "pretrain", *arguments]) == 1
    assert "stage 'pretrain' stopped with exit status" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        results_main(["--redo", "pretrain", "--write-only", *arguments])
    assert "cannot go with --write-only" in capsys.readouterr().err


def test_a_study_runs_its_stages_with_the_chain_stages_they_start_from_and_compare_with():
    assert [stage.name for stage in select(None, ["fusion"])] == [
        "pretrain", "vqa", "video_qa", "pretrain_fusion", "vqa_fusion", "vqa_fusion_iterative", "video_qa_fusion",
        "pretrain_fusion_large", "vqa_fusion_large"]
    assert [stage.name for stage in select(["vqa_seed1"], ["detection"])] == [
        "pretrain", "detection", "detection_scratch", "pretrain_seed1", "vqa_seed1", "pretrain_cpe", "detection_cpe",
        "detection_random_prompts", "detection_text"]
    with pytest.raises(ValueError, match="unknown stage.*'fuzion'"):
        select(None, ["fuzion"])
    names = [stage.name for stage in ALL_STAGES]
    assert len(names) == len(set(names))
    for position, stage in enumerate(ALL_STAGES):  # forget and the runs rely on a start coming first
        assert stage.init_from is None or stage.init_from in names[:position], stage.name


def test_forgetting_pretraining_forgets_the_study_runs_from_it_but_not_other_pretrainings(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    for stage in ("pretrain", "detection_text", "pretrain_seed1", "vqa_seed1"):
        (records / f"{stage}.json").write_text("{}")
    forgotten = ChainRunner(tmp_path / "runs", records).forget(["pretrain"])
    assert {"detection_text", "detection_random_prompts"} <= set(forgotten)
    assert "pretrain_seed1" not in forgotten and "vqa_seed1" not in forgotten
    assert sorted(path.stem for path in records.iterdir()) == ["pretrain_seed1", "vqa_seed1"]


@pytest.mark.slow
def test_a_stage_prepares_what_it_needs_before_its_run_and_a_failed_preparation_names_itself(
        tiny_demo, tmp_path, monkeypatch):
    monkeypatch.setattr(ChainRunner, "MAMMUT", [sys.executable, "-c", "import sys; sys.exit(2)"])  # a run that fails
    tokenizer = tmp_path / "tokenizer_captions.json"
    stage = Stage("pretrain_captok", "t", ("configs/pretrain.yaml",), prepare=(
        ("mammut.data.tokenizer", "--captions", str(tiny_demo / "annotations/captions_train.json"),
         "--out", str(tokenizer)),))
    runner = ChainRunner(tmp_path / "runs", tmp_path / "records")
    with pytest.raises(RuntimeError, match="stopped with exit status 2"):
        runner.run(stage, None)
    assert tokenizer.exists()  # prepared before the run
    failing = Stage("x", "t", ("configs/pretrain.yaml",), prepare=(("mammut.data.tokenizer", "--captions", "nowhere.json",
                                                                     "--out", str(tmp_path / "t.json")),))
    with pytest.raises(RuntimeError, match="stage 'x': its preparation `python -m mammut.data.tokenizer"):
        runner.run(failing, None)


def test_the_results_file_shows_each_study_beside_the_chain_runs_it_compares_with():
    result = StageResult(name="pretrain_seed1", command="mammut fit --seed_everything=1", minutes=12.0,
                         finished="2026-12-07T12:00+00:00", metrics={"pretrain/image_to_text/R@1": 0.5}, baselines={},
                         step=800, machine="a machine")
    text = results_markdown(list(CHAIN), list(STUDIES), {"pretrain_seed1": result})
    cause = text[text.index("### cause"):text.index("### fusion")]
    assert "`make results ARGS=\"--study cause\"`. 1 of" in cause
    assert cause.index("| `pretrain`: pretraining (`make pretrain`) | not run yet") < cause.index(
        "| `pretrain_seed1`: pretraining for 800 steps, seed 1 | image→text R@1 50.0%")
    assert "#### pretrain_seed1: pretraining for 800 steps, seed 1" in cause and "0 of 12 runs finished" in text


def test_a_run_whose_final_state_was_never_validated_is_not_recorded(tmp_path):
    """A stage that trains past its last validation (max_steps not a multiple of val_check_interval)
    would record an earlier state's metrics under its title: refused, with the fix."""
    stage = Stage("pretrain_1000", "t", ("configs/pretrain.yaml",), prepare=(("mammut.data.tokenizer", "--out", "t.json"),))
    runner = ChainRunner(tmp_path / "runs", tmp_path / "records")
    folder = runner.folder(stage)
    with SummaryWriter(str(folder)) as writer:
        writer.add_scalar("val/pretrain/CIDEr-D", 2.5, 799)
    runner.checkpoint(stage).parent.mkdir(parents=True)
    attempts = [{"seconds": 60.0, "exit": 0, "resumed": False, "cpu_seconds": 120.0}]
    torch.save({"global_step": 1000}, runner.checkpoint(stage))
    with pytest.raises(RuntimeError, match="trained to step 1000, but its last validation was logged at step 799.*"
                                           "val_check_interval"):
        runner._record(stage, ["fit", "--config", "configs/pretrain.yaml"], attempts)
    torch.save({"global_step": 800}, runner.checkpoint(stage))
    result = runner._record(stage, ["fit", "--config", "configs/pretrain.yaml"], attempts)
    assert result.step == 799 and result.metrics == {"pretrain/CIDEr-D": 2.5}
    assert result.command == "python -m mammut.data.tokenizer --out t.json && mammut fit --config configs/pretrain.yaml"


def test_every_stage_names_files_that_exist():
    for stage in ALL_STAGES:
        files = [*stage.configs, *(value.split("=", 1)[1] for value in stage.overrides if value.endswith(".yaml"))]
        for file in files:
            assert (REPO / file).is_file(), (stage.name, file)


def test_redo_runs_a_named_study_stage_and_leaves_the_forgotten_others_to_their_study(tmp_path, capsys, caplog,
                                                                                         monkeypatch):
    monkeypatch.setattr(ChainRunner, "MAMMUT", [sys.executable, "-c", "import sys; sys.exit(2)"])  # a run that fails
    records = tmp_path / "records"
    records.mkdir()
    for stage in [*CHAIN, *STUDIES[0].stages]:
        (records / f"{stage.name}.json").write_text(json.dumps(dict(
            name=stage.name, command="mammut fit", minutes=1.0, finished="2026-12-07T10:00+00:00", metrics={"a": 0.5},
            baselines={}, step=10, machine="this machine")))
    arguments = ["--runs", str(tmp_path / "runs"), "--records", str(records), "--out", str(tmp_path / "results.md")]
    # vqa_seed1 is run again (and, its start's checkpoint being elsewhere, stops saying so).
    assert results_main(["--redo", "vqa_seed1", *arguments]) == 1
    assert "stage 'vqa_seed1' starts from" in capsys.readouterr().err
    assert not (records / "vqa_seed1.json").exists() and (records / "pretrain_seed1.json").exists()
    # pretrain_800 is run again (here it fails); the cause study's runs from it wait for their study.
    with caplog.at_level("INFO"):
        assert results_main(["--redo", "pretrain_800", *arguments]) == 1
    assert "stage 'pretrain_800' stopped with exit status" in capsys.readouterr().err
    assert "to run with their study (--study): vqa_800, detection_800, vqa_lora_800" in caplog.text
