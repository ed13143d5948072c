"""Zero-shot classification in `mammut fit` equals CLIP_benchmark's own scoring of the same checkpoint.

The model is the tiny openMaMMUT of fixtures/openmammut (the fork's key names, converted on
loading) with the CLIP tokenizer. `mammut fit` classifies the demo's classification split read
from CLIP_benchmark's WebDataset layout, written by the project's command, at its set frequency;
`python -m mammut.benchmark` then scores the checkpoint with CLIP_benchmark's `build_dataset` and
`evaluate` on the same tars, and retrieval on the val captions written in the same layout.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import tiny_run
from conftest import REPO
from mammut.benchmark import main as benchmark
from mammut.cli import main
from mammut.data.benchmark_wds import write_classification, write_retrieval
from mammut.data.clip_tokenizer import build_clip_tokenizer
from mammut.model.openmammut import openmammut_config

FIXTURES = REPO / "tests" / "fixtures" / "openmammut"
CLIP_VOCABULARY = 49408

pytestmark = pytest.mark.slow


def openmammut_with_clip_vocabulary(tmp_path):
    """The fixture's weights with the token embedding widened to the CLIP tokenizer's vocabulary, as
    the real L/14 has it; the architecture yaml; the CLIP tokenizer."""
    state = load_file(str(FIXTURES / "open_clip_mammut_tiny.safetensors"))
    g = torch.Generator().manual_seed(0)
    extra = CLIP_VOCABULARY - state["text.token_embedding.weight"].shape[0]
    state["text.token_embedding.weight"] = torch.cat([state["text.token_embedding.weight"],
                                                      0.02 * torch.randn(extra, 64, generator=g)])
    state["text.text_projection"] = torch.cat([state["text.text_projection"],
                                               0.02 * torch.randn(64, extra, generator=g)], dim=1)
    save_file(state, str(weights := tmp_path / "openmammut_tiny.safetensors"))
    config = openmammut_config(json.loads((FIXTURES / "README.json").read_text())["open_clip_mammut_config"])
    settings = {k: v for k, v in asdict(config).items() if k not in ("vocab_size", "pad_id", "bos_id", "eos_id")}
    (architecture := tmp_path / "openmammut_tiny.yaml").write_text(yaml.safe_dump(settings))
    build_clip_tokenizer(FIXTURES / "bpe_simple_vocab_16e6.txt.gz").save(str(tokenizer := tmp_path / "clip.json"))
    return weights, architecture, tokenizer


def test_fit_classifies_at_its_frequency_and_equals_clip_benchmark(tiny_demo, tmp_path):
    weights, architecture, tokenizer = openmammut_with_clip_vocabulary(tmp_path)
    classes, captions = tmp_path / "wds_classes", tmp_path / "wds_captions"
    folder = tiny_demo / "classification"
    write_classification(folder / "val", folder / "classnames.txt",
                         folder / "zeroshot_classification_templates.txt", classes, samples_per_shard=30)
    write_retrieval(tiny_demo / "annotations/captions_val.json", tiny_demo / "images/val", captions)
    out = tmp_path / "run"
    main(["fit", "--config", str(REPO / "configs/pretrain.yaml"), f"--model.architecture={architecture}",
          f"--model.init_from={weights}", "--model.lr=1e-5", f"--data.tokenizer={tokenizer}",
          f"--data.root={tiny_demo}", f"--data.val_zeroshot={{demo: {{path: {classes}}}}}",
          "--data.zeroshot_every_n_steps=2", "--data.batch_size=8", "--data.eval_batch_size=12",
          "--data.num_workers=0", "--model.generation.max_new_tokens=4", "--trainer.max_steps=2",
          "--trainer.val_check_interval=1", "--trainer.precision=32-true", "--trainer.enable_progress_bar=false",
          "--trainer.log_every_n_steps=1", f"--trainer.default_root_dir={out}",
          f"--trainer.logger.init_args.save_dir={out}", *tiny_run.checkpoint_every(tmp_path, 2)])
    logged = tiny_run.scalars(next(out.rglob("events.out.tfevents.*")).parent)
    # Validations after steps 1 and 2; zero-shot classification only at the second, step 2.
    validations = [step for step, _ in logged["val/pretrain/image_to_text/R@1"]]
    assert len(validations) == 2
    assert [step for step, _ in logged["val/pretrain/zeroshot/demo/top1"]] == validations[1:]
    assert logged["val_baseline/pretrain/zeroshot/demo/top5"] == [(validations[1], pytest.approx(5 / 42))]
    mammut = {name: logged[f"val/pretrain/{name}"][-1][1] for name in (
        "zeroshot/demo/top1", "zeroshot/demo/top5", "zeroshot/demo/mean_per_class_recall",
        *(f"{direction}/R@{k}" for direction in ("image_to_text", "text_to_image") for k in (1, 5, 10)))}

    checkpoint = next(out.rglob("last.ckpt"))  # names its architecture and tokenizer
    scored = {}
    for dataset, root in (("wds/demo_classes", classes), ("wds/demo_captions", captions)):
        output = tmp_path / f"{dataset.split('/')[1]}.json"
        assert benchmark(["--checkpoint", str(checkpoint), "--dataset", dataset, "--dataset_root", str(root),
                          "--batch_size", "10", "--num_workers", "0", "--no_amp", "--device", "cpu",
                          "--output", str(output)]) == 0
        scored[dataset] = json.loads(output.read_text())
    assert scored["wds/demo_classes"]["task"] == "zeroshot_classification"
    assert scored["wds/demo_captions"]["task"] == "zeroshot_retrieval"
    classification, retrieval = scored["wds/demo_classes"]["metrics"], scored["wds/demo_captions"]["metrics"]
    assert classification["acc1"] == pytest.approx(mammut["zeroshot/demo/top1"], abs=1e-6)
    assert classification["acc5"] == pytest.approx(mammut["zeroshot/demo/top5"], abs=1e-6)
    assert classification["mean_per_class_recall"] == pytest.approx(mammut["zeroshot/demo/mean_per_class_recall"],
                                                                    abs=1e-6)
    for k in (1, 5, 10):  # CLIP_benchmark's "image retrieval" finds images for a text
        assert retrieval[f"image_retrieval_recall@{k}"] == pytest.approx(mammut[f"text_to_image/R@{k}"], abs=1e-6)
        assert retrieval[f"text_retrieval_recall@{k}"] == pytest.approx(mammut[f"image_to_text/R@{k}"], abs=1e-6)
    # Not a degenerate agreement: the scores move off chance and apart from each other.
    assert len({round(v, 6) for v in mammut.values()}) > 4
