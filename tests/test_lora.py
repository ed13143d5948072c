"""LoRA through peft: what trains, merging, and adapter-only checkpoints of real CLI runs."""

import re
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mammut.adapters import BaseWeights
from mammut.checkpointing import read_checkpoint
from mammut.data.tokenizer import CaptionTokenizer
from mammut.model import GenerationConfig, Mammut, MammutConfig, PrefixConfig
from mammut.model.lora import LoraConfig, add_lora, merge_lora
from mammut.tasks.vqa import VQADataModule, VQAModule

import tiny_run

SMALL = dict(image_size=32, patch_size=8, vision_width=32, vision_depth=2, vision_heads=2, text_width=32,
             text_depth=2, text_heads=2, cross_attention_layers=[1], embed_dim=32, context_length=24)
EVERYWHERE = ["decoder.layers.*.self_attention.*", "decoder.layers.*.cross_attention.*", "decoder.layers.*.mlp.*",
              "decoder.lm_head", "vision.vit.blocks.*.attn.qkv"]
BOTH = ["configs/finetune_vqa.yaml", "configs/finetune_vqa_peft.yaml", "configs/finetune_vqa_lora.yaml"]
LORA = ["configs/finetune_vqa.yaml", "configs/finetune_vqa_lora.yaml"]


def test_lora_targets_must_name_linear_layers():
    model = Mammut(MammutConfig(**SMALL, vocab_size=64))
    with pytest.raises(ValueError, match=r"\['decoder.nothing.\*'\] match no linear layer"):
        add_lora(model, LoraConfig(targets=["decoder.nothing.*"]))


def test_merged_lora_gives_the_outputs_of_base_plus_adapter():
    torch.manual_seed(0)
    model = Mammut(MammutConfig(**SMALL, vocab_size=64)).eval()
    embedding = model.decoder.token_embedding.weight.detach().clone()
    adapted = add_lora(model, LoraConfig(rank=2, alpha=4.0, targets=EVERYWHERE))
    assert "decoder.lm_head" in adapted and "vision.vit.blocks.1.attn.qkv" in adapted
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_B." in name:  # zero at the start; trained adapters are not
                parameter.normal_(0, 0.1)
    images, tokens = torch.randn(3, 3, 32, 32), torch.randint(5, 64, (3, 12))
    with torch.no_grad():
        visual = model.encode_image(images)
        expected_logits = model.caption_logits(tokens, visual)
        expected_text = model.text_embedding(tokens)
        assert merge_lora(model) == len(adapted)
        torch.testing.assert_close(model.caption_logits(tokens, model.encode_image(images)), expected_logits,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.text_embedding(tokens), expected_text, atol=1e-5, rtol=1e-5)
    names = [name for name, _ in model.named_parameters()]
    assert not any("lora_" in name or "base_layer" in name for name in names)
    assert "decoder.layers.0.self_attention.qkv.weight" in names
    # The update belongs to the vocabulary projection: the tied token embedding keeps its weights.
    assert model.decoder.lm_head.weight is not model.decoder.token_embedding.weight
    torch.testing.assert_close(model.decoder.token_embedding.weight, embedding)


class RecordUpdates(Callback):
    """Which parameters get a gradient, and which the optimiser keeps state for, at each step."""

    def __init__(self):
        self.with_gradient, self.with_state = set(), set()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.with_gradient |= {name for name, p in pl_module.named_parameters() if p.grad is not None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        states = trainer.optimizers[0].state
        self.with_state |= {name for name, p in pl_module.named_parameters() if p in states and states[p]}


def test_only_adapters_and_prefix_train(tiny_demo, tmp_path):
    """With a prefix and LoRA on a frozen model, only they get gradients and optimiser state, and
    the frozen weights, the conv stem's batch-norm statistics included, stay as they were."""
    data = VQADataModule(root=str(tiny_demo), batch_size=8, eval_batch_size=12, num_workers=0)
    tokenizer = CaptionTokenizer.from_file(tiny_demo / "tokenizer.json")
    architecture = MammutConfig(**{**SMALL, "image_size": 64, "patch_embedding": "conv_stem"},
                                vocab_size=tokenizer.vocab_size, **{f"{k}_id": v for k, v in
                                                                    tokenizer.special_token_ids.items()
                                                                    if k in ("pad", "bos", "eos")})
    module = VQAModule(architecture=architecture, peft=PrefixConfig(prompt_tokens=2, visual_layers=[0, 1]),
                       freeze=["model.*"], lora=LoraConfig(rank=2, targets=EVERYWHERE), warmup_steps=1)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name or name.startswith("tasks.vqa.prefix.") for name in trainable)
    assert any(name.startswith("model.vision.vit.blocks.") for name in trainable)  # LoRA on the encoder too
    record = RecordUpdates()
    L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              callbacks=[record]).fit(module, data)
    assert record.with_gradient == trainable and record.with_state == trainable
    for name, value in module.state_dict().items():
        changed = not torch.equal(value, before[name])
        # lora_A and the prefix move; lora_B starts at zero and moves too. The count of the tokens
        # training met is a record of the run, not a weight.
        assert changed == (name in trainable or name == "model.token_use.counts"), name


@pytest.fixture(scope="module")
def bases(tiny_demo, tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny pretrain checkpoints of different weights: an adapter's base, and another."""
    paths = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp(f"pretrain{seed}")
        tiny_run.run("fit", tiny_demo, out, "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                     f"--seed_everything={seed}", *tiny_run.checkpoint_every(out, 2))
        paths.append(next(out.rglob("last.ckpt")))
    return paths[0], paths[1]


def val_accuracy(printed: str) -> float:
    return float(re.findall(r"^accuracy\s+([\d.]+)", printed, re.MULTILINE)[-1])


@pytest.mark.slow
def test_adapter_checkpoints_reload_merge_and_refuse_another_base(tiny_demo, tmp_path, bases, capsys):
    base, other = bases
    out = tmp_path / "lora"
    capsys.readouterr()
    tiny_run.run("fit", tiny_demo, out, f"--model.init_from={base}", "--trainer.max_steps=3",
                 "--trainer.val_check_interval=3", "--model.peft.visual_layers=[0,1]",
                 "--model.lora.targets=[decoder.layers.*.self_attention.*,decoder.lm_head]",
                 "--model.generation.max_new_tokens=4", *tiny_run.checkpoint_every(tmp_path, 3), config=BOTH)
    printed = capsys.readouterr().out
    trained_accuracy = val_accuracy(printed)
    trainable = int(re.search(r"([\d,]+) trainable of", printed).group(1).replace(",", ""))
    adapter = next(out.rglob("last.ckpt"))
    checkpoint = read_checkpoint(adapter)
    # The trained tensors alone (and the count of the tokens training met), and the base by path and hash.
    counts = checkpoint["state_dict"].pop("model.token_use.counts")
    assert sum(v.numel() for v in checkpoint["state_dict"].values()) == trainable
    assert all(".lora_" in k or k.startswith("tasks.vqa.prefix.") for k in checkpoint["state_dict"])
    assert counts.sum() > read_checkpoint(base)["state_dict"]["model.token_use.counts"].sum()  # the base's, and on
    assert BaseWeights.from_checkpoint(checkpoint) == BaseWeights.of(base)
    assert adapter.stat().st_size < 0.5 * base.stat().st_size

    def validate(*overrides: str) -> float:
        capsys.readouterr()
        tiny_run.run("validate", tiny_demo, tmp_path / "validate", *overrides,
                     "--model.generation.max_new_tokens=4", config=LORA)
        return val_accuracy(capsys.readouterr().out)

    assert validate(f"--ckpt_path={adapter}") == trained_accuracy
    moved = tmp_path / "moved" / "base.ckpt"
    moved.parent.mkdir()
    shutil.copy(base, moved)  # the same base at another path: found by its hash
    assert validate(f"--ckpt_path={adapter}", f"--model.init_from={moved}") == trained_accuracy
    with pytest.raises(ValueError, match=r"trained on the base weights .* another file"):
        validate(f"--ckpt_path={adapter}", f"--model.init_from={other}")

    from mammut.merge_lora import main as merge
    merged = tmp_path / "merged.ckpt"
    assert merge([str(adapter), "--out", str(merged)]) == 0
    merged_checkpoint = read_checkpoint(merged)
    assert not any("lora_" in k or "base_layer" in k for k in merged_checkpoint["state_dict"])
    assert merged_checkpoint["hyper_parameters"]["lora"] is None
    assert merged_checkpoint["hyper_parameters"]["architecture"]["tie_word_embeddings"] is False
    assert validate(f"--ckpt_path={merged}") == trained_accuracy
    # An existing --out is replaced only when asked; the base and the adapter never are.
    base_bytes, adapter_bytes = base.read_bytes(), adapter.read_bytes()
    for out, overwrite in ((merged, []), (base, ["--overwrite"]), (adapter, ["--overwrite"])):
        with pytest.raises(SystemExit):
            merge([str(adapter), "--out", str(out), *overwrite])
    assert base.read_bytes() == base_bytes and adapter.read_bytes() == adapter_bytes
    assert merge([str(adapter), "--out", str(merged), "--overwrite"]) == 0


def test_a_vqa_run_with_a_prefix_warns_when_answers_are_split_into_pieces(tiny_demo, tmp_path, caplog):
    """Full fine-tuning and LoRA learn an answer word's pieces; a prefix on a frozen decoder hardly
    does, so only a run with a prefix is warned."""
    from mammut.data.tokenizer import main as tokenizer_main
    from mammut.task import TaskContext
    from mammut.tasks.vqa import VQATask
    captions_only = tmp_path / "captions_only.json"
    tokenizer_main(["--captions", str(tiny_demo / "annotations/captions_train.json"), "--out", str(captions_only)])
    architecture = MammutConfig(**SMALL, vocab_size=64)
    for tokenizer, peft, warned in ((captions_only, PrefixConfig(2, [0]), True), (captions_only, None, False),
                                    (tiny_demo / "tokenizer.json", PrefixConfig(2, [0]), False)):
        data = VQADataModule(root=str(tiny_demo), tokenizer=str(tokenizer), num_workers=0)
        data.connect(image_size=64, context_length=24, frames=1)
        data.setup("fit")
        inputs = data.task_inputs("vqa")
        assert bool(inputs.answer_words_in_pieces) == (tokenizer == captions_only)
        task = VQATask(peft=peft)
        task.build(architecture)
        caplog.clear()
        task.connect(TaskContext(architecture, GenerationConfig(), inputs, data.tokenizer))
        warnings = [r.getMessage() for r in caplog.records if "answer words" in r.getMessage()]
        assert bool(warnings) == warned
        if warned:
            assert re.search(r"\d+ answer words of the training split are several tokens", warnings[0])


def test_adapter_checkpoints_are_refused_under_sharding_before_the_first_step(bases):
    """Sharded checkpoints cannot be cut down to the adapters: the run stops at set-up, not at its
    first save. (FSDP1 and DeepSpeed, refused by the same check, need a GPU to build a Trainer.)"""
    from lightning.pytorch.strategies import ModelParallelStrategy

    module = VQAModule(architecture=MammutConfig(**SMALL, vocab_size=64), init_from=str(bases[0]),
                       freeze=["model.*"], lora=LoraConfig(rank=2, targets=["decoder.lm_head"]),
                       adapter_checkpoints=True)
    module.trainer = L.Trainer(accelerator="cpu", strategy=ModelParallelStrategy(), logger=False)
    with pytest.raises(ValueError, match="not with the sharding strategy ModelParallelStrategy"):
        module.setup("fit")
    module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    module.trained.check_can_save(module.trainer.strategy)  # one device: allowed
