"""VQA fine-tuning: the answer-only loss, PEFT that trains the prefix alone, and real CLI runs."""

import re
from pathlib import Path

import pytest
import torch

from mammut.tasks.vqa import answer_loss

import tiny_run

PEFT = ["configs/finetune_vqa.yaml", "configs/finetune_vqa_peft.yaml"]  # the recipe and its overlay
FULL = "configs/finetune_vqa.yaml"


def test_answer_loss_ignores_question_tokens():
    g = torch.Generator().manual_seed(0)
    pad, bos, sep, eos = 0, 1, 3, 2
    #         bos  question   sep  answer eos  pad
    tokens = torch.tensor([[bos, 9, 10, 11, sep, 20, 21, eos, pad],
                           [bos, 12, sep, 22, eos, pad, pad, pad, pad]])
    answer_start = torch.tensor([5, 3])
    logits = torch.randn(2, 8, 32, generator=g)
    loss = answer_loss(logits, tokens, answer_start, pad)
    # By hand: logits[:, j] predicts tokens[:, j + 1]; only answer tokens and eos count.
    targets = [(0, 4, 20), (0, 5, 21), (0, 6, eos), (1, 2, 22), (1, 3, eos)]
    expected = torch.stack([torch.nn.functional.cross_entropy(logits[b, j], torch.tensor(t)) for b, j, t in targets])
    torch.testing.assert_close(loss, expected.mean())
    changed = logits.clone()
    changed[0, :4] = torch.randn(4, 32, generator=g) * 10  # every question position of row 0
    changed[1, :2] = torch.randn(2, 32, generator=g) * 10
    changed[:, -1] = torch.randn(2, 32, generator=g) * 10  # after the end
    torch.testing.assert_close(answer_loss(changed, tokens, answer_start, pad), loss)
    changed[1, 2] += torch.randn(32, generator=g)
    assert not torch.isclose(answer_loss(changed, tokens, answer_start, pad), loss)


@pytest.fixture(scope="module")
def pretrained(tiny_demo, tmp_path_factory) -> Path:
    """A checkpoint of a tiny pretraining run, as `make finetune-vqa` starts from."""
    out = tmp_path_factory.mktemp("pretrain")
    tiny_run.run("fit", tiny_demo, out, "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                 *tiny_run.checkpoint_every(out, 2))
    return next(out.rglob("last.ckpt"))


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state.get("state_dict", state)


@pytest.mark.slow
def test_peft_trains_the_prefix_alone(tiny_demo, tmp_path, pretrained, capsys):
    start = tmp_path / "start.pt"
    capsys.readouterr()
    tiny_run.run("fit", tiny_demo, tmp_path / "peft", f"--model.init_from={pretrained}", "--trainer.max_steps=2",
                 "--model.peft.visual_layers=[0,1]", "--trainer.limit_val_batches=0",
                 *tiny_run.checkpoint_every(tmp_path, 2, snapshot=start), config=PEFT)
    printed, messages = capsys.readouterr()
    # Every pretrained tensor loads; only the three of the new prefix keep their initialisation.
    assert f"from {pretrained}; 3 kept their initialisation" in messages
    trainable, total = (int(n.replace(",", "")) for n in re.search(r"([\d,]+) trainable of ([\d,]+)", printed).groups())
    assert trainable == sum(p.numel() for name, p in weights(start).items() if name.startswith("tasks.vqa.prefix."))
    assert f"({100 * trainable / total:.2f}%)" in printed
    before, after = weights(start), weights(next((tmp_path / "peft").rglob("last.ckpt")))
    pretrained_weights = weights(pretrained)
    # The overlay writes adapter checkpoints: the prefix alone (the base is init_from, by hash),
    # and the tokens training met, the base's and this run's (mammut.model.token_use).
    prefix = {f"tasks.vqa.prefix.{name}" for name in ("projection.weight", "projection.bias", "prompt")}
    assert set(after) == prefix | {"model.token_use.counts"}
    for name in prefix | {"model.token_use.counts"}:
        assert not torch.equal(after[name], before[name]), f"{name} did not change"
    # The vocabulary rows that pretraining never met start at the mean of those it met (token_use);
    # every other weight is the pretrained one.
    met = pretrained_weights["model.token_use.counts"] > 0
    for name, value in before.items():
        if name in pretrained_weights:
            expected = pretrained_weights[name]
            if name in ("model.decoder.token_embedding.weight", "model.decoder.lm_head.weight"):
                assert not torch.equal(value[~met], expected[~met]), f"{name}: the unmet rows did not restart"
                value, expected = value[met], expected[met]
            assert torch.equal(value, expected), f"{name} is not the pretrained weight"


@pytest.mark.slow
def test_finetune_from_a_checkpoint_reports_logs_and_answers(tiny_demo, tmp_path, pretrained, capsys):
    out = tmp_path / "vqa"
    capsys.readouterr()
    tiny_run.run("fit", tiny_demo, out, f"--model.init_from={pretrained}", "--trainer.max_steps=3",
                 "--trainer.val_check_interval=3", "--model.generation.max_new_tokens=4",
                 "--trainer.logger.init_args.version=run", config=FULL)
    logs = out / "finetune_vqa" / "run"
    report = capsys.readouterr().out
    for row in ("accuracy", "question_type/colour", "question_type/count", "question_type/existence",
                "question_type/relation", "question_type/shape", "answer_type/yes/no"):
        assert re.search(rf"^{re.escape(row)}\s+[\d.]+\s+[\d.]+\s+\d+$", report, re.MULTILINE), row
    logged = tiny_run.scalars(logs)
    for tag in ("train/loss", "val/vqa/accuracy", "val_baseline/vqa/accuracy", "val/vqa/question_type/count",
                "val_baseline/vqa/answer_type/yes/no"):
        assert tag in logged, tag
    # The majority baseline on the demo world is far from 0 and from 1.
    assert 0.2 < logged["val_baseline/vqa/accuracy"][-1][1] < 0.7
    assert "val/vqa/samples" in tiny_run.image_tags(logs)
    checkpoints = sorted(p.name for p in (logs / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("best-step") for name in checkpoints)

    checkpoint = logs / "checkpoints" / "last.ckpt"
    image = sorted((tiny_demo / "images/val").glob("*.jpg"))[0]
    tiny_run.run("predict", tiny_demo, tmp_path / "predict", f"--ckpt_path={checkpoint}",
                 f"--data.predict_images=[{image}]", "--data.predict_questions=[what color is the circle?]",
                 "--model.generation.max_new_tokens=4", config=FULL)
    # image, question and the generated answer (after 3 steps it may well be empty).
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(str(image)))
    assert line.split("\t")[:2] == [str(image), "what color is the circle?"] and len(line.split("\t")) == 3
