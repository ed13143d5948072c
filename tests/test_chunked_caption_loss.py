"""The caption loss that never builds the whole logits (``chunked_caption_loss``): the same loss and
gradients as ``caption_loss`` on the full logits, in the tasks that train captions and answers."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from mammut.data.batch import ImageTextBatch, VQABatch
from mammut.model import Mammut, MammutConfig, caption_loss, chunked_caption_loss
from mammut.model.lora import LoraConfig, add_lora
from mammut.tasks.pretrain import ImageTextDataModule, PretrainModule, PretrainTask
from mammut.tasks.vqa import VQATask

from test_model import PAD, random_tokens, tiny_config
from tiny_run import scalars


def gradients(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Zeros for a tensor the loss does not use (VQA's loss leaves the contrastive projections alone)."""
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [torch.zeros_like(t) if grad is None else grad for t, grad in zip(tensors, grads)]


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_loss_and_gradients_equal_the_full_logits(label_smoothing, chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 16, generator=g, requires_grad=True)
    head = torch.nn.Linear(16, 40, bias=True)
    targets = torch.randint(1, 40, (3, 7), generator=g)
    targets[0, 4:] = PAD  # padding, ignored
    targets[2, 1] = PAD
    full = caption_loss(head(hidden), targets, PAD, label_smoothing)
    chunked = chunked_caption_loss(hidden, head, targets, PAD, label_smoothing, chunk_tokens=chunk)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    # A weight on the loss (the task's) reaches the gradients as it does through the full logits.
    tensors = [hidden, head.weight, head.bias]
    for got, expected in zip(gradients(3.0 * chunked, tensors), gradients(3.0 * full, tensors)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_tied_and_a_lora_wrapped_head_get_the_same_gradients():
    torch.manual_seed(0)
    model = Mammut(tiny_config())
    add_lora(model, LoraConfig(rank=2, targets=["decoder.lm_head", "decoder.layers.*.mlp.*"]))
    with torch.no_grad():  # a LoRA update that is not zero, so that it takes part
        model.decoder.lm_head.lora_B["default"].weight.normal_()
    for p in model.decoder.token_embedding.parameters():
        p.requires_grad_(True)  # the embedding the head's base weight is tied to
    g = torch.Generator().manual_seed(1)
    images, tokens = torch.randn(2, 3, 32, 32, generator=g), random_tokens(2, 9, g, lengths=[9, 5])
    trained = [p for p in model.parameters() if p.requires_grad]
    assert any("lm_head.lora_A" in n for n, p in model.named_parameters() if p.requires_grad)
    full = caption_loss(model(images, tokens).caption_logits, tokens[:, 1:], PAD, 0.1)
    out = model(images, tokens, caption_logits=False)
    assert out.caption_logits is None and out.caption_hidden.shape == (2, 8, model.config.text_width)
    chunked = chunked_caption_loss(out.caption_hidden, model.decoder.lm_head, tokens[:, 1:], PAD, 0.1, chunk_tokens=3)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    for got, expected in zip(gradients(chunked, trained), gradients(full, trained)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_without_gradients_and_without_targets():
    head = torch.nn.Linear(8, 20)
    hidden = torch.randn(2, 4, 8)
    targets = torch.randint(1, 20, (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(chunked_caption_loss(hidden, head, targets, PAD, chunk_tokens=3),
                                   caption_loss(head(hidden), targets, PAD))
    # Nothing to score (an empty batch, or every target ignored): zero, joined to the graph.
    empty = torch.zeros(0, 4, 8, requires_grad=True)
    loss = chunked_caption_loss(empty, head, torch.zeros(0, 4, dtype=torch.long), PAD)
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_caption_loss(hidden, head, targets, PAD, chunk_tokens=0)


def task_gradients(task, model, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    loss = task.loss(model, batch).total
    return loss.detach(), gradients(loss, [p for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("fusion", [{}, {"decoder_fusion": "iterative"}])
def test_the_tasks_train_the_same_with_the_chunked_loss(fusion):
    torch.manual_seed(0)
    model = Mammut(tiny_config(**fusion))
    g = torch.Generator().manual_seed(2)
    images, tokens = torch.randn(3, 3, 32, 32, generator=g), random_tokens(3, 10, g, lengths=[10, 6, 8])
    pretrain = ImageTextBatch(images, tokens, torch.arange(3))
    vqa = VQABatch(images, tokens, answer_start=torch.tensor([4, 3, 5]), question_ids=torch.arange(3),
                   questions=["?"] * 3, answers=[[]] * 3)
    for make_task, batch in ((lambda chunk: PretrainTask(caption_weight=2.0, label_smoothing=0.1,
                                                         loss_chunk_tokens=chunk), pretrain),
                             (lambda chunk: VQATask(label_smoothing=0.1, loss_chunk_tokens=chunk), vqa)):
        loss, grads = task_gradients(make_task(None), model, batch)
        chunked_loss, chunked_grads = task_gradients(make_task(4), model, batch)
        torch.testing.assert_close(chunked_loss, loss, atol=1e-5, rtol=1e-5)
        for got, expected in zip(chunked_grads, grads):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


class PoisonTheVocabularyProjectionAtStep(Callback):
    """Sends one weight of the vocabulary projection to NaN before a given step: only the caption
    loss, computed chunk by chunk, sees it."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.decoder.lm_head.weight[5, 0] = float("nan")


@pytest.mark.slow
def test_a_run_with_the_chunked_loss_and_fusion_logs_its_loss_and_the_guard_stops_a_bad_one(tiny_demo, tmp_path):
    data = ImageTextDataModule(root=str(tiny_demo), batch_size=8, num_workers=0, context_length=24, image_size=32)
    architecture = MammutConfig(image_size=32, vision_width=32, vision_depth=2, vision_heads=2, text_width=32,
                                text_depth=2, text_heads=2, cross_attention_layers=[1], embed_dim=32,
                                context_length=24, vocab_size=data.vocab_size, fusion_vision_block=0,
                                fusion_tokens=4, decoder_fusion="iterative")
    trainer = L.Trainer(max_steps=4, limit_val_batches=0, log_every_n_steps=1, enable_checkpointing=False,
                        callbacks=[PoisonTheVocabularyProjectionAtStep(2)], enable_progress_bar=False,
                        logger=TensorBoardLogger(tmp_path, name="run", version="0"), default_root_dir=tmp_path)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at global step 2 .*caption_loss=nan"):
        trainer.fit(PretrainModule(architecture=architecture, loss_chunk_tokens=16), data)
    trainer.logger.experiment.flush()
    logged = scalars(tmp_path / "run" / "0")
    caption = logged["train/pretrain/caption_loss"]
    assert [step for step, _ in caption] == [0, 1] and all(math.isfinite(v) and v > 0 for _, v in caption)
