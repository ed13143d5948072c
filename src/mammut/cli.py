"""Command line: ``mammut fit|validate|test|predict --config configs/<recipe>.yaml [--key=value ...]``.

Every constructor argument of the task (``--model.*``), the data module (``--data.*``) and the
Trainer (``--trainer.*``) can be set in YAML or overridden here; ``--print_config`` shows the
resolved configuration. The data module takes its image size and context length from the
model's architecture unless they are set for it.

Linked arguments (set once, copied to the other side; a value given for the target is replaced):
- ``data.vocab_size`` and ``data.special_token_ids`` -> ``model.architecture.vocab_size`` and its
  ``pad_id``/``bos_id``/``eos_id``: the model is sized for the tokenizer.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI

from mammut.module import MammutModule


class MammutCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.vocab_size", "model.init_args.architecture.vocab_size", apply_on="instantiate")
        for name in ("pad", "bos", "eos"):
            parser.link_arguments("data.special_token_ids", f"model.init_args.architecture.{name}_id",
                                  compute_fn=lambda ids, name=name: ids[name], apply_on="instantiate")


def main(args=None) -> None:
    MammutCLI(
        MammutModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"},
        args=args,
    )


if __name__ == "__main__":
    main()
