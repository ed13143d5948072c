"""A checkpoint counts the tokens its training met; a model initialised from it restarts the
vocabulary rows that training never met, and keeps every row of a file that does not say."""

from __future__ import annotations

import pytest
import torch

from mammut.data.tokenizer import CaptionTokenizer
from mammut.model.token_use import TokenUse, restart_unmet_rows
from mammut.tasks.vqa import VQAModule

from conftest import REPO
from tiny_run import run

OLD_PRETRAIN = REPO / "tests/fixtures/pre_task_checkpoints/pretrain.ckpt"  # written before token use was kept


def test_counts_add_every_sequence_and_every_rank():
    use = TokenUse(6)
    use.add([torch.tensor([[1, 4, 2, 0]]), torch.tensor([[1, 4, 4, 2]])], all_ranks=lambda counts: 2 * counts)
    assert use.counts.tolist() == [2, 4, 4, 0, 6, 0]  # as if a second rank had met the same
    assert use.met().tolist() == [True, True, True, False, True, False]
    use.forget()
    use.add([torch.tensor([[5]])])
    assert not use.recorded and use.met().all()  # unknown stays unknown: every row counts as met


def test_unmet_rows_restart_at_the_met_rows_mean_and_spread():
    torch.manual_seed(0)
    embedding = torch.randn(500, 8) * 3 + 5
    met = torch.arange(500) < 400
    before = embedding.clone()
    assert restart_unmet_rows(embedding, met, torch.Generator().manual_seed(0)) == 100
    assert torch.equal(embedding[met], before[met])
    new = embedding[~met]
    assert torch.allclose(new.mean(0), before[met].mean(0), atol=1.0)
    assert torch.allclose(new.std(0), before[met].std(0), rtol=0.3)
    again = before.clone()
    restart_unmet_rows(again, met, torch.Generator().manual_seed(0))
    assert torch.equal(again, embedding)  # the same file and seed give the same rows


@pytest.fixture(scope="module")
def pretrained(tiny_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    run("fit", tiny_demo, out, "--trainer.max_steps=3", "--trainer.limit_val_batches=0",
        "--data.batch_size=8", "--trainer.logger.init_args.version=0")
    return out / "pretrain" / "version_0" / "checkpoints" / "last.ckpt"


def vqa_from(checkpoint, **settings) -> VQAModule:
    """A VQA model of the checkpoint's shape, initialised from it."""
    architecture = torch.load(checkpoint, weights_only=False)["hyper_parameters"]["architecture"]
    return VQAModule(architecture=architecture, init_from=str(checkpoint), **settings)


def test_a_pretraining_checkpoint_counts_its_caption_tokens(pretrained, tiny_demo):
    counts = torch.load(pretrained, weights_only=False)["state_dict"]["model.token_use.counts"]
    assert int(counts.sum()) == 3 * 8 * 24  # 3 steps of 8 captions of 24 tokens, padding included
    tokenizer = CaptionTokenizer.from_file(tiny_demo / "tokenizer.json")
    assert all(counts[i] == 0 for i in tokenizer.token_ids("yes"))  # captions never say it
    assert all(counts[i] > 0 for i in tokenizer.token_ids("a red circle"))


def test_fine_tuning_restarts_the_rows_pretraining_never_met(pretrained):
    saved = torch.load(pretrained, weights_only=False)["state_dict"]
    met = saved["model.token_use.counts"] > 0
    trained = saved["model.decoder.token_embedding.weight"]
    vqa = vqa_from(pretrained)
    rows = vqa.model.decoder.token_embedding.weight.detach()
    assert torch.equal(rows[met], trained[met])
    assert not torch.isclose(rows[~met], trained[~met]).all(dim=1).any()
    assert torch.equal(vqa.model.token_use.counts, saved["model.token_use.counts"])  # fine-tuning counts on
    kept = vqa_from(pretrained, restart_unmet_tokens=False).model.decoder.token_embedding.weight
    assert torch.equal(kept.detach(), trained)


def test_a_file_that_does_not_count_keeps_every_row():
    saved = torch.load(OLD_PRETRAIN, weights_only=False)["state_dict"]
    assert "model.token_use.counts" not in saved
    vqa = vqa_from(OLD_PRETRAIN)
    assert torch.equal(vqa.model.decoder.token_embedding.weight.detach(), saved["model.decoder.token_embedding.weight"])
    assert not vqa.model.token_use.recorded
