"""Merge a LoRA run's adapters into its base weights: one full checkpoint without adapters.

    python -m mammut.merge_lora runs/finetune_vqa_lora/version_0/checkpoints/last.ckpt --out vqa_merged.ckpt
    mammut validate --config configs/finetune_vqa.yaml --ckpt_path=vqa_merged.ckpt
    mammut fit ... --model.init_from=vqa_merged.ckpt

Takes an adapter checkpoint (its base is loaded from the path it records, or from ``--base``)
or a full checkpoint of a LoRA run. Each adapted layer's weight becomes W + (alpha / r) B A
(peft's merge) and the layer is plain ``nn.Linear`` again; everything else (an eP-ALM prefix,
the task heads) is kept as trained. The result runs at the base model's speed, and loads
wherever a checkpoint of the same task does. When the vocabulary projection was adapted and
tied to the token embedding, the two are untied in the result (its architecture says so).

An existing ``--out`` is replaced only with ``--overwrite``, and never when it is the adapter
itself or its base (the ``init_from`` it records, by path or by content): every adapter trained
on that base would be refused by its hash afterwards.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import lightning as L
import torch

from mammut.adapters import BaseWeights, file_sha256
from mammut.checkpointing import AtomicCheckpointIO, read_checkpoint
from mammut.model.lora import is_lora_layer, merge_lora
from mammut.module import MammutModule


def merged_checkpoint(path: Path, base: Path | None = None) -> dict:
    """A full checkpoint of the run in ``path`` with its LoRA adapters merged into the weights."""
    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    if not hparams.get("lora"):
        raise ValueError(f"{path}: not a LoRA run (its model has no lora settings); nothing to merge")
    # The run's own class (the CLI records it, e.g. mammut.tasks.vqa.VQAModule); for an adapter
    # checkpoint, load_from_checkpoint loads and checks the base it names, or ``base`` if it moved.
    module_class = import_module_class(hparams.get("_class_path"))
    module = module_class.load_from_checkpoint(path, map_location="cpu", base=base)
    decoder = module.model.decoder
    untie = is_lora_layer(decoder.lm_head) and module.architecture.tie_word_embeddings
    merged = merge_lora(module.model)
    architecture = dict(hparams["architecture"]) if isinstance(hparams.get("architecture"), dict) else None
    if untie and architecture is not None:
        architecture["tie_word_embeddings"] = False
    hparams.update(lora=None, adapter_checkpoints=False, init_from=None, architecture=architecture)
    return {"state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "hyper_parameters": hparams, "pytorch-lightning_version": L.__version__,
            "merged_lora": {"source": str(path.resolve()), "layers": merged}}


def import_module_class(class_path: str | None) -> type[MammutModule]:
    if not class_path:
        return MammutModule
    module_name, _, name = class_path.rpartition(".")
    found = getattr(importlib.import_module(module_name), name)
    if not issubclass(found, MammutModule):
        raise ValueError(f"the checkpoint's model class {class_path} is not a MammutModule")
    return found


def refuse_to_overwrite(out: Path, path: Path, base: Path | None, overwrite: bool) -> str | None:
    """Why writing the merged checkpoint to ``out`` would destroy an input, or None."""
    if not out.exists():
        return None
    if _same_file(out, path):
        return f"--out {out} is the adapter checkpoint being merged; write the merged checkpoint to another file"
    checkpoint = read_checkpoint(path)
    recorded = BaseWeights.from_checkpoint(checkpoint)
    init_from = checkpoint.get("hyper_parameters", {}).get("init_from")
    bases = [Path(p) for p in (recorded.path if recorded else None, init_from, base) if p]
    if any(_same_file(out, b) for b in bases) or (recorded and _holds(out, recorded)):
        return (f"--out {out} is the base weights this adapter was trained on (its init_from): replacing it would make "
                "every adapter trained on that base unusable; write the merged checkpoint to another file")
    if not overwrite:
        return f"--out {out} exists; pass --overwrite to replace it, or choose another file"
    return None


def _holds(out: Path, base: BaseWeights) -> bool:
    """Whether ``out`` is a copy of the base (hashed only where the sizes leave it possible)."""
    recorded = Path(base.path)
    if not out.is_file() or (recorded.is_file() and recorded.stat().st_size != out.stat().st_size):
        return False
    return file_sha256(out) == base.sha256


def _same_file(a: Path, b: Path) -> bool:
    """The same file by resolved path, or by inode where both exist (hard links, bind mounts)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.samefile(b)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mammut.merge_lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a LoRA run's checkpoint (adapter-only or full)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the merged checkpoint (.ckpt)")
    parser.add_argument("--base", type=Path, help="the adapter's base weights, if they moved from the path it records")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (never the adapter or its base)")
    args = parser.parse_args(argv)
    refusal = refuse_to_overwrite(args.out, args.checkpoint, args.base, args.overwrite)
    if refusal:
        parser.error(refusal)
    with torch.no_grad():
        checkpoint = merged_checkpoint(args.checkpoint, args.base)
    AtomicCheckpointIO().save_checkpoint(checkpoint, args.out)
    tensors = checkpoint["state_dict"]
    print(f"wrote {args.out}: {checkpoint['merged_lora']['layers']} LoRA layers merged, {len(tensors)} tensors, "
          f"{sum(t.numel() for t in tensors.values()):,} numbers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
