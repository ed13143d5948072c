"""openMaMMUT import: the fork's weights, converted, give the fork's own outputs.

fixtures/openmammut/ holds a tiny randomly initialised openMaMMUT in the fork's key names, its
inputs and the reference implementation's outputs (README.json there), and the parameter shapes
of the fork's mammut_ViT-L-14.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import tiny_run
from conftest import REPO
from mammut.cli import main
from mammut.convert import main as convert_main
from mammut.data.clip_tokenizer import build_clip_tokenizer
from mammut.model import GenerationConfig, Mammut, generate, preset
from mammut.model.openmammut import convert, openmammut_config
from mammut.tasks.pretrain import PretrainModule

FIXTURES = Path(__file__).parent / "fixtures" / "openmammut"
CHECKPOINT = FIXTURES / "open_clip_mammut_tiny.safetensors"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny_config():
    description = json.loads((FIXTURES / "README.json").read_text())
    # The tiny model's own 1000-token vocabulary: start 998, end 999, pad 0.
    return replace(openmammut_config(description["open_clip_mammut_config"]), pad_id=0, bos_id=998, eos_id=999)


@pytest.fixture(scope="module")
def reference():
    return load_file(str(FIXTURES / "reference_outputs.safetensors"))


@pytest.fixture(scope="module")
def converted(tiny_config):
    torch.manual_seed(0)
    model = Mammut(tiny_config).eval()
    conversion = convert(load_file(str(CHECKPOINT)), tiny_config)
    assert conversion.unused == []
    model.load_state_dict(conversion.state, strict=True)  # every parameter filled, none left over
    return model


def assert_reproduces(model: Mammut, reference: dict) -> None:
    with torch.no_grad():
        visual_tokens = model.encode_image(reference["images"])
        outputs = {
            "image_tokens": visual_tokens,
            "image_features": model.image_embedding(visual_tokens),
            "text_features": model.text_embedding(reference["text"]),
            "caption_logits": model.caption_logits(reference["text"], visual_tokens),
            "logit_scale": model.scale().reshape(1),
        }
    for name, output in outputs.items():
        assert output.shape == reference[name].shape, name
        error = (output - reference[name]).abs().max().item()
        assert error < TOLERANCE, f"{name} differs from the reference by {error:.2e}"


def test_the_converted_model_reproduces_the_reference_implementation(converted, reference):
    assert_reproduces(converted, reference)


def test_init_from_converts_the_forks_checkpoint_on_loading(tiny_config, reference):
    module = PretrainModule(architecture=tiny_config, init_from=str(CHECKPOINT))
    assert_reproduces(module.model.eval(), reference)


def test_the_convert_command_writes_a_file_that_init_from_loads(tmp_path, reference):
    config_file = tmp_path / "mammut_tiny.json"
    config_file.write_text(json.dumps(json.loads((FIXTURES / "README.json").read_text())["open_clip_mammut_config"]))
    out = tmp_path / "converted.safetensors"
    assert convert_main([str(CHECKPOINT), "--open-clip-config", str(config_file), "--out", str(out)]) == 0
    # The architecture written beside the weights; the tokenizer would give the vocabulary and token ids.
    architecture = yaml.safe_load(out.with_suffix(".yaml").read_text())
    module = PretrainModule(architecture={**architecture, "vocab_size": 1000, "bos_id": 998, "eos_id": 999},
                            init_from=str(out))
    assert_reproduces(module.model.eval(), reference)


def test_tensors_the_architecture_cannot_place_are_listed_and_refused(tmp_path, tiny_config, capsys):
    state = load_file(str(CHECKPOINT))
    state["text.cross_attn.2.ln_1.weight"] = torch.ones(64)  # a third cross-attention block: the config has two
    state["visual.attn_pool.query"] = torch.zeros(4, 64)
    conversion = convert(state, tiny_config)
    assert sorted(conversion.unused) == ["text.cross_attn.2.ln_1.weight", "visual.attn_pool.query"]
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(ValueError, match="2 openMaMMUT tensors have no place.*visual.attn_pool.query"):
        PretrainModule(architecture=tiny_config, init_from=str(bad))
    # Into an architecture of other shapes (mammut's own tiny preset), nothing is loaded and the command says why.
    assert convert_main([str(CHECKPOINT), "--architecture", "configs/model/tiny.yaml",
                         "--out", str(tmp_path / "no.safetensors")]) == 1
    assert "not converted" in capsys.readouterr().err and not (tmp_path / "no.safetensors").exists()


def test_kv_cache_generation_equals_the_full_generative_pass(converted, reference):
    visual_tokens = converted.encode_image(reference["images"])
    for prompt in (None, reference["text"][:, :4]):
        settings = dict(max_new_tokens=10, num_beams=1)
        cached = generate(converted, visual_tokens, prompt, GenerationConfig(use_cache=True, **settings))
        full = generate(converted, visual_tokens, prompt, GenerationConfig(use_cache=False, **settings))
        assert cached.shape[1] > 1
        assert torch.equal(cached, full)


def test_the_l14_preset_has_exactly_the_parameter_shapes_of_the_forks_model():
    fork = json.loads((FIXTURES / "mammut_ViT-L-14_shapes.json").read_text())
    config = preset("openmammut_l14")
    assert replace(openmammut_config(fork["config"]), pad_id=0, bos_id=49406, eos_id=49407) == config
    with torch.device("meta"):
        model = Mammut(config)
        conversion = convert({k: torch.empty(shape) for k, shape in fork["state_dict_shapes"].items()}, config)
    assert conversion.unused == []
    ours = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert {name: list(t.shape) for name, t in conversion.state.items()} == ours
    assert sum(p.numel() for p in model.parameters()) == fork["parameter_count"]


@pytest.mark.slow
def test_vqa_fine_tunes_from_the_forks_checkpoint_with_the_clip_tokenizer(tiny_demo, tiny_config, tmp_path):
    """The README's recipe end to end: `mammut fit` on real files, from a checkpoint in the fork's
    key names (init_from converts it) with the CLIP tokenizer. The tiny model's vocabulary is widened
    to CLIP's 49,408 tokens, as the real L/14 has it."""
    state = load_file(str(CHECKPOINT))
    g = torch.Generator().manual_seed(0)
    extra = 49408 - state["text.token_embedding.weight"].shape[0]
    state["text.token_embedding.weight"] = torch.cat([state["text.token_embedding.weight"],
                                                      0.02 * torch.randn(extra, 64, generator=g)])
    state["text.text_projection"] = torch.cat([state["text.text_projection"],
                                               0.02 * torch.randn(64, extra, generator=g)], dim=1)
    save_file(state, str(fork := tmp_path / "openmammut_tiny.safetensors"))
    build_clip_tokenizer(FIXTURES / "bpe_simple_vocab_16e6.txt.gz").save(str(tokenizer := tmp_path / "clip.json"))
    settings = {k: v for k, v in asdict(tiny_config).items() if k not in ("vocab_size", "pad_id", "bos_id", "eos_id")}
    (architecture := tmp_path / "openmammut_tiny.yaml").write_text(yaml.safe_dump(settings))
    out, start = tmp_path / "run", tmp_path / "start.pt"
    main(["fit", "--config", str(REPO / "configs/finetune_vqa.yaml"), f"--model.architecture={architecture}",
          f"--model.init_from={fork}", f"--data.tokenizer={tokenizer}", f"--data.root={tiny_demo}",
          "--data.batch_size=8", "--data.eval_batch_size=12", "--data.num_workers=0", "--model.generation.max_new_tokens=4",
          "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.precision=32-true",
          "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1", f"--trainer.default_root_dir={out}",
          f"--trainer.logger.init_args.save_dir={out}", *tiny_run.checkpoint_every(tmp_path, 2, snapshot=start)])
    loaded = torch.load(start)
    assert torch.equal(loaded["model.decoder.visual_to_text.weight"], state["map_viz2txt_kv"].t())
    assert loaded["model.decoder.token_embedding.weight"].shape == (49408, 64)
    logged = tiny_run.scalars(next(out.rglob("events.out.tfevents.*")).parent)
    assert len(logged["train/vqa/answer_loss"]) == 2 and all(math.isfinite(v) for _, v in logged["train/vqa/answer_loss"])
    assert 0 <= logged["val/vqa/accuracy"][-1][1] <= 100
