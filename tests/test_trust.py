"""What a careless or hostile user meets: files that would run code, commands that would
overwrite their inputs, and bad input refused with a short message naming the file or record."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from mammut.checkpointing import CheckpointError, read_checkpoint
from mammut.model.weights_file import UnsafeWeightsError, read_state_dict

from conftest import REPO

TORCH_ADVICE = ("weights_only=False", "weights_only set to False", "weights_only` set to `False")


# ---------------------------------------------------------------------- weights that would run code


class RunsAShellCommand:
    """Unpickling this calls os.system, which torch's weights_only blocks by module ("posix")."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.marker}",)


def evil_file(folder: Path, legacy: bool = False) -> tuple[Path, Path]:
    """A torch file that runs a shell command when unpickled in full, and the file it would write."""
    marker = folder / "pwned"
    path = folder / "evil.bin"
    torch.save({"weight": torch.ones(2), "payload": RunsAShellCommand(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    return path, marker


@pytest.fixture(params=["zip", "legacy"])
def evil(request, tmp_path) -> tuple[Path, Path]:
    return evil_file(tmp_path, legacy=request.param == "legacy")


def test_a_file_naming_a_blocked_module_is_unsafe_and_no_message_advises_loading_it_unsafely(evil):
    path, marker = evil
    with pytest.raises(UnsafeWeightsError, match=r"init_from: .*evil.bin was not loaded.*it names posix.system") as error:
        read_state_dict(path, purpose="init_from")
    assert not any(advice in str(error.value) for advice in TORCH_ADVICE)
    with pytest.raises(CheckpointError, match=r"evil.bin was not loaded.*posix.system") as error:
        read_checkpoint(path)
    assert not any(advice in str(error.value) for advice in TORCH_ADVICE)
    assert not marker.exists()


def test_convert_refuses_a_file_that_would_run_code(tmp_path):
    path, marker = evil_file(tmp_path)
    result = subprocess.run([sys.executable, "-m", "mammut.convert", str(path), "--out", str(tmp_path / "out.safetensors")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0
    assert "UnsafeWeightsError: checkpoint: " in result.stderr and "it names posix.system" in result.stderr
    assert "not a complete torch file" not in result.stderr
    assert not any(advice in result.stderr for advice in TORCH_ADVICE), result.stderr
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_a_harmless_class_is_unsafe_too_and_a_damaged_file_is_damaged(tmp_path):
    import argparse
    harmless = tmp_path / "namespace.bin"
    torch.save({"weight": torch.ones(2), "args": argparse.Namespace(lr=1.0)}, harmless)
    with pytest.raises(UnsafeWeightsError, match="it names argparse.Namespace") as error:
        read_state_dict(harmless)
    assert not any(advice in str(error.value) for advice in TORCH_ADVICE)
    plain = tmp_path / "plain.bin"
    torch.save({"weight": torch.ones(2)}, plain)
    assert torch.equal(read_state_dict(plain)["weight"], torch.ones(2))
    damaged = tmp_path / "damaged.bin"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(damaged, "w") as copy:
        for member in source.infolist():  # the pickle replaced by an opcode weights_only does not read
            copy.writestr(member, b"\x80\x02I12\n." if member.filename.endswith("data.pkl") else source.read(member))
    with pytest.raises(ValueError, match="damaged.bin: not a complete torch file .*Unsupported operand") as error:
        read_state_dict(damaged)
    assert not isinstance(error.value, UnsafeWeightsError)
    assert not any(advice in str(error.value) for advice in TORCH_ADVICE)


# ---------------------------------------------------------------------- merge_lora's --out


@pytest.fixture
def adapter(tmp_path) -> tuple[Path, Path]:
    """An adapter checkpoint as a LoRA run writes it (its tensors, its settings, its base by path
    and hash), and that base."""
    from mammut.adapters import BaseWeights
    base = tmp_path / "pretrain" / "last.ckpt"
    base.parent.mkdir()
    torch.save({"state_dict": {"model.decoder.lm_head.weight": torch.randn(8, 4)}}, base)
    path = tmp_path / "lora" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": {"model.decoder.lm_head.lora_A.default.weight": torch.zeros(2, 4)},
                "hyper_parameters": {"_class_path": "mammut.tasks.vqa.VQAModule", "init_from": str(base),
                                     "lora": {"rank": 2, "targets": ["decoder.lm_head"]}},
                "base_weights": BaseWeights.of(base).as_dict()}, path)
    return path, base


def merge_fails(capsys, *argv: str) -> str:
    from mammut.merge_lora import main as merge
    with pytest.raises(SystemExit) as exit_:
        merge(list(argv))
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_merge_lora_never_writes_over_the_adapter_or_its_base(adapter, tmp_path, capsys, overwrite):
    path, base = adapter
    before = {file: file.read_bytes() for file in (path, base)}
    error = merge_fails(capsys, str(path), "--out", str(base), *overwrite)
    assert f"--out {base} is the base weights this adapter was trained on" in error
    relative = os.path.relpath(base, Path.cwd())  # the same file by another spelling
    assert "is the base weights" in merge_fails(capsys, str(path), "--out", relative, *overwrite)
    copy = tmp_path / "copy_of_base.ckpt"  # the base by content: found by its hash
    copy.write_bytes(base.read_bytes())
    assert "is the base weights" in merge_fails(capsys, str(path), "--out", str(copy), *overwrite)
    error = merge_fails(capsys, str(path), "--out", str(path), *overwrite)
    assert f"--out {path} is the adapter checkpoint being merged" in error
    assert {file: file.read_bytes() for file in (path, base)} == before


def test_merge_lora_replaces_another_existing_file_only_when_told(adapter, tmp_path, capsys):
    path, _ = adapter
    existing = tmp_path / "merged.ckpt"
    existing.write_bytes(b"a merged checkpoint of last week")
    error = merge_fails(capsys, str(path), "--out", str(existing))
    assert f"--out {existing} exists; pass --overwrite to replace it" in error
    assert existing.read_bytes() == b"a merged checkpoint of last week"


# ---------------------------------------------------------------------- detection predict pictures


def wide_and_transparent_pngs(folder: Path) -> list[Path]:
    """A 16-bit greyscale gradient (PIL's own conversion clips it to white) and an RGBA image whose
    fully transparent half stores red (which PIL's conversion shows)."""
    import numpy as np
    from PIL import Image
    gradient = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (64, 1))
    Image.fromarray(gradient).save(folder / "depth.png")
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[:, :32] = (255, 0, 0, 0)  # red under alpha 0
    rgba[:, 32:] = (0, 0, 255, 255)
    Image.fromarray(rgba).save(folder / "logo.png")
    return [folder / "depth.png", folder / "logo.png"]


def test_detection_predict_draws_the_pixels_the_model_saw(tmp_path):
    import numpy as np
    from PIL import Image

    from mammut.data.images import load_rgb_image
    from mammut.model import GenerationConfig, MammutConfig
    from mammut.task import TaskContext
    from mammut.tasks.detection import DetectionInputs, DetectionTask

    task = DetectionTask()
    task.connect(TaskContext(MammutConfig(), GenerationConfig(), DetectionInputs(input_shape=(3, 64, 64)),
                             output_dir=tmp_path / "run"))
    for file in wide_and_transparent_pngs(tmp_path):
        task.draw_prediction(str(file), [{"bbox": [40.0, 44.0, 20.0, 16.0], "word": "star", "score": 0.9}])
        drawn = np.asarray(Image.open(tmp_path / "run" / "predictions" / f"{file.stem}.png").convert("RGB"))
        seen = np.asarray(load_rgb_image(file).resize((256, 256), Image.NEAREST))  # drawn 4x for legibility
        assert drawn.shape == seen.shape
        # Above the box and its label (drawn from 4 * 44 - 11 = 165 down), the pictures are the same.
        np.testing.assert_array_equal(drawn[:150], seen[:150], err_msg=file.name)


def test_detection_predict_words_the_tokenizer_spells_in_pieces_are_named(tiny_demo, tmp_path, caplog):
    from PIL import Image

    from mammut.tasks.detection import DetectionDataModule
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), "white").save(photo)
    data = DetectionDataModule(root=str(tiny_demo), num_workers=0, predict_images=[str(photo)],
                               predict_words=["circle", "zebra", "giraffe neck"])
    data.setup("predict")
    warnings = [r.getMessage() for r in caplog.records if "predict_words" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "'zebra' (" in warnings[0] and "'giraffe' (" in warnings[0] and "tokenizer.json" in warnings[0]
    assert "'circle'" not in warnings[0]  # a word of the demo's training text: one token


# ---------------------------------------------------------------------- the CLI's last line


def cli_error(capsys, *argv: str) -> list[str]:
    """The real `mammut` command in-process: its exit status must say it failed; stderr's lines."""
    from mammut.cli import main
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def tiny_fit(tiny_demo, *configs: str) -> list[str]:
    from tiny_run import TINY_MODEL
    return ["fit", *(a for c in configs for a in ("--config", str(REPO / c))), *TINY_MODEL,
            f"--data.root={tiny_demo}", "--data.num_workers=0", "--trainer.max_steps=1"]


@pytest.mark.parametrize("content, reason", [
    (bytes.fromhex("89504e470d0a1a0a0000000d49484452") + bytes(range(256)),
     r"not a text file \(byte 0x89 at offset 0 is not UTF-8\)"),
    (b"model:\n  init_args:\n    lr: [1, 2\n    warmup_steps: 3\n", r"not valid YAML: line 4, column 17"),
    (b"just a sentence\n", "holds a str, not settings"),
], ids=["png", "broken-yaml", "prose"])
def test_a_config_that_is_not_yaml_is_refused_naming_the_file(tiny_demo, tmp_path, capsys, content, reason):
    config = tmp_path / "settings.yaml"
    config.write_bytes(content)
    lines = cli_error(capsys, *tiny_fit(tiny_demo, "configs/pretrain.yaml"), "--config", str(config))
    assert re.fullmatch(rf"mammut fit: error: --config {re.escape(str(config))}: {reason}.*", lines[-1]), lines
    assert len(lines) == 1 and "Traceback" not in "\n".join(lines)


@pytest.mark.parametrize("configs, overrides, reason", [
    (["configs/finetune_vqa.yaml", "configs/finetune_vqa_lora.yaml"], ["--model.lora.targets=[decoder.nothing.*]"],
     r"LoRA targets \['decoder.nothing.\*'\] match no linear layer"),
    (["configs/finetune_vqa.yaml", "configs/finetune_vqa_lora.yaml"], ["--model.lora.rank=0"],
     "LoRA rank must be at least 1, got 0"),
    (["configs/pretrain.yaml"], ["--data.root={nowhere}"], r"{nowhere}/tokenizer.json: tokenizer file not found"),
    (["configs/multitask.yaml"], ["--model.task_weights={{vqa: 2.0, captioning: 1.0}}"],
     r"task_weights name \['captioning'\], which are not among the tasks"),
], ids=["lora-targets", "lora-rank", "data-root", "task-weights"])
def test_the_cli_ends_with_the_one_failing_reason(tiny_demo, tmp_path, capsys, configs, overrides, reason):
    nowhere = tmp_path / "nowhere"
    argv = tiny_fit(tiny_demo, *configs) + [o.format(nowhere=nowhere) for o in overrides]
    if "multitask" in configs[0]:  # its data settings sit under each task
        argv = [a for a in argv if not a.startswith("--data.")] + [
            f"--data.tasks.{task}.init_args.{setting}" for task in ("pretrain", "vqa")
            for setting in (f"root={tiny_demo}", "num_workers=0")]
    lines = cli_error(capsys, *argv)
    assert re.match(rf"mammut fit: error: {reason.format(nowhere=re.escape(str(nowhere)))}", lines[-1]), lines[-3:]
    printed = "\n".join(lines)
    assert "Namespace(" not in printed and "Union subtypes" not in printed and "Traceback" not in printed
    assert len(lines) <= 4, lines


# ---------------------------------------------------------------------- make bench


def test_make_bench_installs_its_peers_into_their_own_environment():
    """open_clip's transformers pin breaks peft's imports; `make bench` must leave .venv as it is."""
    import shutil
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # -B: every step printed, as on a machine where nothing is installed yet.
    commands = subprocess.run(["make", "-n", "-B", "bench", "VENV=.venv"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.splitlines()
    installs = [c for c in commands if re.search(r"\bpip install\b", c)]
    assert installs and all(c.lstrip().startswith(".venv-bench/bin/pip ") and "bench" in c for c in installs), installs
    assert not any(".venv/" in c for c in commands), commands
    runs = [c for c in commands if "bench/" in c and c.rstrip().endswith(".py")]
    assert runs and all(c.startswith(".venv-bench/bin/python ") for c in runs), runs
