"""CLIP_benchmark's zero-shot classification and retrieval, scored by CLIP_benchmark itself, on a
mammut checkpoint.

    pip install -e ".[benchmark]"
    python -m mammut.benchmark --checkpoint runs/pretrain/version_0/checkpoints/last.ckpt \\
        --dataset wds/demo_classes --dataset_root data/demo/benchmark/demo_classes --output demo_classes.json

CLIP_benchmark (``clip-benchmark`` on PyPI) loads only the model types it lists, with no way to add
one, so this command does what its ``clip_benchmark eval`` does for them: it builds the dataset
with CLIP_benchmark's ``build_dataset``, scores with its ``zeroshot_classification.evaluate`` or
``zeroshot_retrieval.evaluate``, and writes the JSON it writes. mammut supplies what CLIP_benchmark
asks of a model: ``encode_image`` and ``encode_text`` (the contrastive embeddings), the image
transform its evaluation uses, and a tokenizer that turns texts into token ids of the model's
context length.

The checkpoint is any weights file mammut reads (a Lightning checkpoint, a state dict,
``.safetensors``, an openMaMMUT checkpoint), through the one door for weights; every parameter
must be filled. A Lightning checkpoint names its architecture and tokenizer; for other files give
``--architecture`` (a model yaml) and ``--tokenizer``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from PIL import Image
from torch import Tensor, nn

from mammut.checkpointing import read_checkpoint
from mammut.data.images import as_rgb
from mammut.data.tokenizer import CaptionTokenizer
from mammut.data.transforms import image_transform
from mammut.model import Mammut, MammutConfig
from mammut.model.weights import load_mammut_weights

TASKS = ("auto", "zeroshot_classification", "zeroshot_retrieval")


class ContrastiveEncoders(nn.Module):
    """A MaMMUT as CLIP_benchmark calls a model: image and text embeddings (normalised)."""

    def __init__(self, model: Mammut):
        super().__init__()
        self.model = model

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.image_embedding(self.model.encode_image(images))

    def encode_text(self, tokens: Tensor) -> Tensor:
        return self.model.text_embedding(tokens)


class Tokenize:
    """Texts -> (N, context_length) token ids, as mammut's data modules encode them."""

    def __init__(self, tokenizer: CaptionTokenizer, context_length: int):
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, texts: str | list[str]) -> Tensor:
        return self.tokenizer.encode_batch([texts] if isinstance(texts, str) else list(texts), self.context_length)


class Transform:
    """An image as CLIP_benchmark's datasets give it (PIL, any mode) -> the model's input, as
    mammut's own evaluation makes it (8-bit RGB, ``image_transform``)."""

    def __init__(self, image_size: int):
        self.transform = image_transform(image_size, train=False)

    def __call__(self, image: Image.Image) -> Tensor:
        return self.transform(as_rgb(image))


def saved_settings(checkpoint: Path) -> tuple[dict | None, str | None]:
    """(architecture, tokenizer path) that a Lightning checkpoint saved, or (None, None) for a
    weights file that holds none."""
    if checkpoint.suffix == ".safetensors":
        return None, None
    saved = read_checkpoint(checkpoint)
    architecture = saved.get("hyper_parameters", {}).get("architecture")
    data = saved.get("datamodule_hyper_parameters", {})
    tokenizer = str(Path(data["root"]) / data["tokenizer"]) if "root" in data and "tokenizer" in data else None
    return architecture, tokenizer


def load_model(checkpoint: Path, architecture: Path | None = None,
               tokenizer: Path | None = None) -> tuple[Mammut, CaptionTokenizer]:
    """The model of a weights file, every parameter filled, and its tokenizer."""
    saved_architecture, saved_tokenizer = saved_settings(checkpoint)
    tokenizer_file = tokenizer or (Path(saved_tokenizer) if saved_tokenizer else None)
    if tokenizer_file is None:
        raise ValueError(f"{checkpoint} names no tokenizer: give --tokenizer")
    text = CaptionTokenizer.from_file(tokenizer_file)
    if architecture is not None:
        # As the CLI links them in training: the tokenizer sizes the vocabulary and sets the token ids.
        ids = text.special_token_ids
        config = MammutConfig(**{**yaml.safe_load(architecture.read_text()), "vocab_size": text.vocab_size,
                                 "pad_id": ids["pad"], "bos_id": ids["bos"], "eos_id": ids["eos"]})
    elif saved_architecture is not None:
        config = MammutConfig(**saved_architecture)
    else:
        raise ValueError(f"{checkpoint} names no architecture: give --architecture (a model yaml)")
    # The checkpoint holds the vision weights too: the file it was first initialised from is not read.
    model = Mammut(replace(config, vision_weights=None))
    load_mammut_weights(model, checkpoint, renames={"model.": ""}, strict=True, purpose="checkpoint")
    return model.eval(), text


def top_k_accuracy(output: Tensor, target: Tensor, topk: tuple[int, ...] = (1,)) -> list[float]:
    """The share of rows whose target is among their k highest logits, for each k: what
    ``clip_benchmark.metrics.zeroshot_classification.accuracy`` computes."""
    hits = output.topk(max(topk), 1, True, True)[1] == target.view(-1, 1)
    return [hits[:, :k].sum().item() / len(target) for k in topk]


def working_accuracy() -> None:
    """CLIP_benchmark 1.6.2's ``accuracy`` converts a one-element array with ``float()``, which
    NumPy 2.4 refuses (TypeError); where it fails, ``top_k_accuracy`` takes its place, and the
    rest of its ``evaluate`` runs as it is."""
    from clip_benchmark.metrics import zeroshot_classification
    try:
        zeroshot_classification.accuracy(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))
    except TypeError:
        zeroshot_classification.accuracy = top_k_accuracy


def default_task(dataset: str, root: str) -> str:
    """CLIP_benchmark's default task for a dataset; a ``wds/`` one says it in its dataset_type.txt."""
    from clip_benchmark.datasets.builder import get_dataset_default_task
    kind = Path(root) / "dataset_type.txt"
    if dataset.startswith("wds/") and kind.is_file():
        return "zeroshot_retrieval" if kind.read_text().strip().lower() == "retrieval" else "zeroshot_classification"
    return get_dataset_default_task(dataset.removeprefix("wds/"))


def evaluate(model: Mammut, tokenizer: CaptionTokenizer, dataset: str, dataset_root: str, task: str = "auto",
             split: str = "test", batch_size: int = 64, num_workers: int = 2, recall_k: tuple[int, ...] = (1, 5, 10),
             device: str = "cpu", amp: bool = True) -> dict:
    """CLIP_benchmark's scores of ``model`` on ``dataset``, and the task scored."""
    from clip_benchmark.datasets.builder import build_dataset, get_dataset_collate_fn
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    task = default_task(dataset, dataset_root) if task == "auto" else task
    encoders = ContrastiveEncoders(model).to(device).eval()
    tokenize = Tokenize(tokenizer, model.config.context_length)
    data = build_dataset(dataset_name=dataset, root=dataset_root, transform=Transform(model.config.image_size),
                         split=split, download=False, task=task)
    # The loaders CLIP_benchmark's own command builds.
    if dataset.startswith("wds/"):
        # A worker without a shard of its own would find no samples, which webdataset refuses.
        shards = Path(dataset_root) / split / "nshards.txt"
        workers = min(num_workers, int(shards.read_text())) if shards.is_file() else num_workers
        loader = torch.utils.data.DataLoader(data.batched(batch_size), batch_size=None, shuffle=False,
                                             num_workers=workers)
    else:
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                             collate_fn=get_dataset_collate_fn(dataset))
    with torch.no_grad():
        if task == "zeroshot_classification":
            working_accuracy()
            metrics = zeroshot_classification.evaluate(encoders, loader, tokenize, data.classes, data.templates,
                                                       device=device, amp=amp)
        elif task == "zeroshot_retrieval":
            metrics = zeroshot_retrieval.evaluate(encoders, loader, tokenize, recall_k_list=list(recall_k),
                                                  device=device, amp=amp)
        else:
            raise ValueError(f"task {task!r}: mammut.benchmark runs {', '.join(TASKS[1:])}")
    return {"task": task, "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mammut.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a mammut checkpoint or weights file")
    parser.add_argument("--architecture", type=Path, help="a model yaml, for a file that names none")
    parser.add_argument("--tokenizer", type=Path, help="the model's tokenizer.json (default: the checkpoint's)")
    parser.add_argument("--dataset", required=True, help="a CLIP_benchmark dataset name, e.g. wds/imagenet1k")
    parser.add_argument("--dataset_root", required=True, help="where the dataset is (a wds/ dataset's root)")
    parser.add_argument("--task", default="auto", choices=TASKS)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--recall_k", type=int, nargs="+", default=[1, 5, 10], help="retrieval's K values")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # CLIP_benchmark autocasts by default: float16 on a GPU; on a CPU autocast means bfloat16, whose
    # coarse logits tie, and top-1 (topk) and mean per-class recall (argmax) break ties differently.
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--amp", dest="amp", action="store_true", default=None,
                           help="autocast (the default on a GPU, as CLIP_benchmark runs)")
    precision.add_argument("--no_amp", dest="amp", action="store_false", default=None,
                           help="full precision (the default on a CPU)")
    parser.add_argument("--output", type=Path, help="the JSON file to write (default: print it only)")
    args = parser.parse_args(argv)
    amp = args.amp if args.amp is not None else args.device.startswith("cuda")
    try:
        model, tokenizer = load_model(args.checkpoint, args.architecture, args.tokenizer)
        result = evaluate(model, tokenizer, args.dataset, args.dataset_root, args.task, args.split, args.batch_size,
                          args.num_workers, tuple(args.recall_k), args.device, amp)
    except (OSError, ValueError) as error:
        print(f"python -m mammut.benchmark: {error}", file=sys.stderr)
        return 1
    # The record CLIP_benchmark's own command writes.
    dump = {"dataset": args.dataset, "model": "mammut", "pretrained": str(args.checkpoint), "task": result["task"],
            "metrics": result["metrics"], "language": "en"}
    text = json.dumps(dump)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
