"""Which samples each data-parallel rank and DataLoader worker reads from sets of shards, per epoch.

Every (rank, worker) pair is one *stream*; streams never read the same samples, and each is a
function of (seed, epoch, stream, layout) alone, so a resumed run can rebuild it.

- **Plain shard lists.** Each epoch shuffles a source's shards, the same order on every rank
  (from the seed and the epoch). The shards are cut into pieces, each shard into
  ``ceil(streams / shards)`` interleaved parts (one part when there are at least as many shards as
  streams), and stream ``s`` of ``S`` takes pieces ``s, s + S, ...``: no two streams share a
  sample, whatever the shard counts and sizes. A stream that has read all its pieces before the
  epoch asks no more starts them again, and says so once: only then is a sample seen twice in an
  epoch (give ``train_num_samples`` at most the data's size, or use resampling).
- **Resampled shards** (open_clip's ``--dataset-resampled``): each stream draws shards with
  replacement from its own random source, seeded by (seed, epoch, stream), so streams differ.
- **Several sources** with weights (open_clip's upsampling factors): each stream draws, for each
  sample, which source it comes from, with probability proportional to its weight.

Each source's samples go through a shuffle buffer (webdataset's ``shuffle``, with a seeded random
source) that mixes samples across the shards a stream has open; a plain list's buffer is emptied at
the end of each pass, so that it never holds a sample twice.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import webdataset as wds

from mammut.data.errors import DataFormatError
from mammut.data.shard_reader import Entry, read_shard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSource:
    """One set of shards and its weight in the mix; ``sample_counts`` from the stats files (None where unknown)."""

    name: str
    shards: tuple[str, ...]
    weight: float = 1.0
    sample_counts: tuple[int | None, ...] = ()

    def expected(self, index: int) -> int | None:
        return self.sample_counts[index] if index < len(self.sample_counts) else None


@dataclass(frozen=True)
class Stream:
    """Worker ``worker`` of ``num_workers`` on rank ``rank`` of ``world_size``."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def count(self) -> int:
        return self.world_size * self.num_workers


def plain_entries(source: ShardSource, stream: Stream, seed: int | str, epoch: int,
                  shuffle_buffer: int) -> Iterator[Entry]:
    """The stream's pieces of the epoch's shuffled shard list, each pass shuffled on its own (so
    that the buffer never holds a sample twice), again and again (see the module's docstring)."""
    order = list(range(len(source.shards)))
    random.Random(f"{seed}/{source.name}/{epoch}/shard-order").shuffle(order)
    parts = math.ceil(stream.count / len(order))
    pieces = [(order[p % len(order)], p // len(order)) for p in range(stream.index, len(order) * parts, stream.count)]

    def one_pass(repeat: int) -> Iterator[Entry]:
        for shard, part in pieces:
            yield from read_shard(source.shards[shard], part, parts, source.expected(shard) if not repeat else None)

    for repeat in range(2**62):
        read = 0
        rng = random.Random(f"{seed}/{source.name}/{epoch}/{stream.index}/{repeat}/shuffle")
        for entry in _shuffled(one_pass(repeat), shuffle_buffer, rng):
            read += 1
            yield entry
        if not read:
            raise DataFormatError(f"source {source.name}: stream {stream.index} of {stream.count} found no samples in "
                                  f"its shards ({', '.join(source.shards[s] for s, _ in pieces[:3])}, ...)")
        if not repeat:
            log.warning("source %s: rank %d worker %d read all of its %d samples of epoch %d and starts them again; "
                        "data.train_num_samples is more than the shards hold, or they are uneven",
                        source.name, stream.rank, stream.worker, read, epoch)


def resampled_entries(source: ShardSource, stream: Stream, seed: int | str, epoch: int,
                      shuffle_buffer: int) -> Iterator[Entry]:
    """Shards drawn with replacement, from a random source of this stream's own, shuffled."""
    rng = random.Random(f"{seed}/{source.name}/{epoch}/{stream.index}/{stream.count}/resampled")

    def drawn() -> Iterator[Entry]:
        while True:
            shard = rng.randrange(len(source.shards))
            yield from read_shard(source.shards[shard], expected=source.expected(shard))

    return _shuffled(drawn(), shuffle_buffer, random.Random(f"{seed}/{source.name}/{epoch}/{stream.index}/shuffle"))


def stream_entries(sources: list[ShardSource], stream: Stream, seed: int | str, epoch: int, resampled: bool,
                   shuffle_buffer: int) -> Iterator[Entry]:
    """The endless entries of one stream in one epoch: each source's, mixed by weight."""
    read = resampled_entries if resampled else plain_entries
    per_source = [read(source, stream, seed, epoch, shuffle_buffer) for source in sources]
    if len(sources) == 1:
        return per_source[0]
    return _mix(per_source, [s.weight for s in sources], random.Random(f"{seed}/{epoch}/{stream.index}/mix"))


def _shuffled(entries: Iterator[Entry], buffer: int, rng: random.Random) -> Iterator[Entry]:
    """webdataset's shuffle buffer, drawing from ``rng`` (so that a resumed run rebuilds it)."""
    return iter(wds.shuffle(buffer, min(buffer, 100), rng=rng)(entries)) if buffer > 1 else entries


def _mix(streams: list[Iterator[Entry]], weights: list[float], rng: random.Random) -> Iterator[Entry]:
    choices = range(len(streams))
    while True:
        yield next(streams[rng.choices(choices, weights)[0]])


# ---------------------------------------------------------------- an epoch's share of each worker
def worker_batches(total: int, num_workers: int, worker: int) -> int:
    """Batches worker ``worker`` makes of its rank's ``total``: the DataLoader takes them round
    robin, so batch ``i`` of the epoch is worker ``i % num_workers``'s."""
    return total // num_workers + (worker < total % num_workers)


def worker_batches_done(batches_done: int, num_workers: int, worker: int) -> int:
    """How many of its batches worker ``worker`` had made when its rank had taken ``batches_done``."""
    return max(0, -(-(batches_done - worker) // num_workers))
