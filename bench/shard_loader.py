"""Does the shard loader keep up? Image-caption pairs per second from the tar-shard loader of
configs/pretrain_shards.yaml (and from the COCO-file loader of configs/pretrain.yaml beside it),
against the pairs per second that the pretraining step consumes.

    python bench/shard_loader.py                 # data/demo with its shards (make pretrain-shards writes them)
    python bench/shard_loader.py --batches 20

Each loader is the data module's training loader as its recipe builds it (batch 128, 2 worker
processes; the shards read from data/demo/shards/train, decoded, transformed and tokenized in the
workers), timed over ``--batches`` batches after its first (worker start-up and the shuffle
buffer's first fill). The step is the full pretraining step of configs/pretrain.yaml's model
(contrastive and captioning losses, backward, AdamW) on one of those batches, bf16 autocast where
the CPU runs it natively, median of ``--repeats``. Loaders and step are timed one after the
other, each with the machine to itself; in a real run they share the cores. Last, the time to a
resumed shard loader's first batch, ``--resume-after`` batches into an epoch, against a fresh one's.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from mammut.cli import cpu_has_native_bf16
from mammut.model import MammutConfig
from mammut.tasks.pretrain import ImageTextDataModule, PretrainModule, ShardTextDataModule
from report import markdown_table, median_step_seconds, publish, step_parser

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def recipe(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def loader_pairs_per_second(data, batches: int) -> tuple[float, object]:
    iterator = iter(data.train_dataloader())
    first = next(iterator)  # the workers start and fill their queues
    start = time.perf_counter()
    pairs = 0
    for _ in range(batches):
        pairs += len(next(iterator))
    return pairs / (time.perf_counter() - start), first


def resume_seconds(data: ShardTextDataModule, batches_done: int) -> tuple[float, float]:
    """Seconds to the first batch of a fresh epoch, and of one resumed after ``batches_done``
    batches (each worker reads past the samples its batches had used, without decoding them)."""
    times = []
    for done in (0, batches_done):
        data.resume_point = (0, done * data.hparams.batch_size)
        start = time.perf_counter()
        next(iter(data.train_dataloader()))
        times.append(time.perf_counter() - start)
    data.resume_point = (0, 0)
    return times[0], times[1]


def step_function(module: PretrainModule, bf16: bool):
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    task = module.tasks["pretrain"]

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = task.loss(module.model, batch).total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--root", default="data/demo")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per loader")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--resume-after", type=int, default=100, help="batches a timed resume skips")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16" if cpu_has_native_bf16() else "fp32",
                        help="of the step: bf16 autocast (as bf16-mixed) or fp32; bf16 where the CPU runs it natively")
    parser.set_defaults(batch_size=128, repeats=5, warmup=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pretrain, shards = recipe("pretrain.yaml"), recipe("pretrain_shards.yaml")
    architecture = yaml.safe_load((CONFIGS / pretrain["model"]["init_args"]["architecture"]).read_text())
    rows, batch = [], None
    for name, config, data_class in (("tar shards (configs/pretrain_shards.yaml)", shards, ShardTextDataModule),
                                     ("COCO files (configs/pretrain.yaml)", pretrain, ImageTextDataModule)):
        settings = {**config["data"]["init_args"], "root": args.root, "batch_size": args.batch_size,
                    "num_workers": args.workers}
        data = data_class(**settings)
        data.connect(image_size=architecture["image_size"], context_length=architecture["context_length"])
        data.setup("fit")
        rate, first = loader_pairs_per_second(data, args.batches)
        batch = batch or first
        rows.append([name, rate])
        if data_class is ShardTextDataModule:
            fresh, resumed = resume_seconds(data, args.resume_after)

    tokenizer = data.tokenizer
    config = MammutConfig(**architecture, vocab_size=tokenizer.vocab_size,
                          **{f"{name}_id": i for name, i in tokenizer.special_token_ids.items() if name != "sep"})
    weights = {k: v for k, v in pretrain["model"]["init_args"].items() if k.endswith("_weight")}
    step = step_function(PretrainModule(architecture=config, **weights).train(), args.precision == "bf16")
    seconds = median_step_seconds({"step": lambda: step(batch)}, args.warmup, args.repeats)["step"]
    consumed = len(batch) / seconds
    table = markdown_table(["loader", "loader pairs/s", "training step pairs/s", "loader / step"],
                           [[name, f"{rate:.0f}", f"{consumed:.0f}", f"{rate / consumed:.1f}×"] for name, rate in rows])
    notes = (f"Pretraining on the demo world: batch {args.batch_size}, {args.workers} loader workers, "
             f"{architecture['image_size']}x{architecture['image_size']} images; the step is the full pretraining step "
             f"of configs/pretrain.yaml's model in {'bf16 autocast' if args.precision == 'bf16' else 'fp32'} "
             f"({seconds * 1e3:.0f} ms per step). Loaders and step were timed one after the other. "
             f"Resuming the shard loader {args.resume_after} batches into an epoch "
             f"({args.resume_after * args.batch_size} samples read again, not decoded): {resumed:.1f} s to its "
             f"first batch, against {fresh:.1f} s for a fresh epoch.")
    publish("Tar-shard loading against the pretraining step", f"{table}\n\n{notes}", args.results)


if __name__ == "__main__":
    main()
