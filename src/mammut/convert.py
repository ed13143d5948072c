"""Convert an openMaMMUT checkpoint (LAION's open_clip fork) to a mammut weights file.

    python -m mammut.convert openmammut-ViT-L-14.bin --out openmammut_l14.safetensors
    mammut fit ... --model.architecture=openmammut_l14.yaml --model.init_from=openmammut_l14.safetensors

``--model.init_from`` also takes the fork's checkpoint as it is and converts it on loading; a
converted file is smaller to keep (safetensors, no pickle) and loads without the conversion.
The architecture is the ``openmammut_l14`` preset unless ``--architecture`` names a model yaml
or ``--open-clip-config`` the fork's model config JSON (any size the fork defines); it is written
beside the weights as a model yaml for ``--model.architecture``. Every tensor the conversion cannot place,
and every parameter of the architecture the checkpoint does not fill, is listed, and either
fails the conversion: nothing is dropped silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from mammut.model import Mammut, MammutConfig, preset
from mammut.model.openmammut import convert, is_openmammut, openmammut_config
from mammut.model.weights_file import read_state_dict

SHOWN = 20  # names listed per problem; the count says how many there are


def architecture(args: argparse.Namespace) -> MammutConfig:
    if args.open_clip_config:
        return openmammut_config(json.loads(Path(args.open_clip_config).read_text()))
    if args.architecture:
        return MammutConfig(**yaml.safe_load(Path(args.architecture).read_text()))
    return preset("openmammut_l14")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mammut.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="the fork's checkpoint (.bin/.pt torch file or .safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the mammut .safetensors file")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--architecture", type=Path, help="a model yaml (default: configs/model/openmammut_l14.yaml)")
    source.add_argument("--open-clip-config", type=Path, help="the fork's model config, e.g. mammut_ViT-L-14.json")
    args = parser.parse_args(argv)

    state = read_state_dict(args.checkpoint, purpose="checkpoint")
    if not is_openmammut(state):
        parser.error(f"{args.checkpoint}: not an openMaMMUT checkpoint (it has no map_viz2txt_kv or text.cross_attn.*)")
    config = architecture(args)
    conversion = convert(state, config)
    # The vocabulary size is the checkpoint's (in training, the tokenizer sets it).
    token_embedding = conversion.state.get("decoder.token_embedding.weight")
    if token_embedding is not None:
        config = replace(config, vocab_size=token_embedding.shape[0])
    with torch.device("meta"):  # the parameter shapes, without allocating a model
        expected = {name: tuple(t.shape) for name, t in Mammut(config).state_dict().items()}
    missing = sorted(set(expected) - set(conversion.state))
    wrong = sorted(name for name, t in conversion.state.items() if expected.get(name, tuple(t.shape)) != tuple(t.shape))
    for title, names in (("tensors of the checkpoint with no place in the architecture", conversion.unused),
                         ("parameters of the architecture the checkpoint does not fill", missing),
                         ("parameters whose shape differs from the architecture's", wrong)):
        if names:
            more = [f"... and {len(names) - SHOWN} more"] if len(names) > SHOWN else []
            print(f"{len(names)} {title}:", *names[:SHOWN], *more, sep="\n  ", file=sys.stderr)
    if conversion.unused or missing or wrong:
        print(f"{args.checkpoint}: not converted", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Under MammutModule's names, so that --model.init_from reads it like any mammut checkpoint.
    save_file({f"model.{name}": t.contiguous() for name, t in conversion.state.items()}, str(args.out),
              metadata={"architecture": json.dumps(asdict(config)), "source": str(args.checkpoint)})
    # The architecture beside it, for --model.architecture; the tokenizer sets the vocabulary and token ids.
    architecture_file = args.out.with_suffix(".yaml")
    settings = {k: v for k, v in asdict(config).items() if k not in ("vocab_size", "pad_id", "bos_id", "eos_id")}
    architecture_file.write_text(f"# The architecture of {args.out.name}, converted from {args.checkpoint.name}.\n"
                                 + yaml.safe_dump(settings, sort_keys=False))
    print(f"wrote {args.out}: {len(conversion.state)} tensors, "
          f"{sum(t.numel() for t in conversion.state.values()):,} parameters; its architecture: {architecture_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
