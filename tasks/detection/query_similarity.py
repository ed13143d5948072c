"""How far apart the detector's class queries are: the cosine between class names' text embeddings.

    python -m mammut.tasks.detection.query_similarity runs/pretrain/version_0/checkpoints/last.ckpt \\
        --names circle square triangle star hexagon cross

The detection recipe keeps the text side frozen, so a class is scored against the embedding
pretraining gave its name (averaged over the recipe's templates). Two classes whose queries are
close can hardly be told apart by any detector head on top: this prints how close they are, for a
pretrain or a detection checkpoint (both hold the same text side), as a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor

from mammut.benchmark import load_model
from mammut.tasks.detection.task import class_queries

RECIPE_TEMPLATES = ["a {}", "a small {}", "a large {}"]  # configs/finetune_detection.yaml


@torch.no_grad()
def query_similarity(model, tokenizer, names: list[str], templates: list[str]) -> Tensor:
    """(K, K) cosine between the class queries of ``names``, each averaged over ``templates``."""
    queries = class_queries(model, tokenizer, model.config.context_length,
                            [[template.format(name) for template in templates] for name in names])
    return queries @ queries.T


def similarity_table(names: list[str], similarity: Tensor) -> str:
    rows = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    rows += [f"| {name} | " + " | ".join(f"{value:.3f}" for value in row.tolist()) + " |"
             for name, row in zip(names, similarity)]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mammut.tasks.detection.query_similarity",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a pretrain or detection checkpoint")
    parser.add_argument("--names", nargs="+", required=True, help="class names, as the detector is asked for them")
    parser.add_argument("--templates", nargs="+", default=RECIPE_TEMPLATES,
                        help="prompts with {} for the name (default: the detection recipe's)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="default: the one the checkpoint's run read")
    args = parser.parse_args(argv)
    if any("{}" not in template for template in args.templates):
        parser.error(f"every template needs a {{}} for the class name, got {args.templates}")
    model, tokenizer = load_model(args.checkpoint, tokenizer=args.tokenizer)
    print(similarity_table(args.names, query_similarity(model, tokenizer, args.names, args.templates)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
