"""Which samples each data-parallel rank and DataLoader worker reads from sets of shards, per epoch.

Every (rank, worker) pair is one *stream*; streams never read the same samples, and each is a
function of (seed, epoch, stream, layout) alone, so a resumed run can rebuild it.

- **Plain shard lists.** Each epoch shuffles a source's shards, the same order on every rank
  (from the seed and the epoch), and deals them out (``stream_pieces``): with the sample counts
  of the stats files, stream ``s`` of ``S`` takes the ``s``-th of ``S`` equal stretches of the
  samples in that order, so shares are equal whatever the shard sizes and counts (more streams
  than shards included); without counts, interleaved parts of shards. No two streams share a
  sample. A stream that has read all of its share before the epoch ends starts it again, and
  says so once: only then is a sample seen twice in an epoch (keep ``train_num_samples`` at most
  the data's size, or use resampling).
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
from mammut.data.shard_reader import EVERY_SAMPLE, Entry, read_shard

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
    """The stream's share of the epoch's shuffled shard list, each pass shuffled on its own (so
    that the buffer never holds a sample twice), again and again (see the module's docstring)."""
    order = list(range(len(source.shards)))
    random.Random(f"{seed}/{source.name}/{epoch}/shard-order").shuffle(order)
    pieces = stream_pieces(order, source.sample_counts, stream)

    def one_pass(repeat: int) -> Iterator[Entry]:
        for shard, positions in pieces:
            yield from read_shard(source.shards[shard], positions, source.expected(shard) if not repeat else None)

    for repeat in range(2**62):
        read = 0
        rng = random.Random(f"{seed}/{source.name}/{epoch}/{stream.index}/{repeat}/shuffle")
        for entry in _shuffled(one_pass(repeat), shuffle_buffer, rng):
            read += 1
            yield entry
        if not read:
            raise DataFormatError(f"source {source.name}: rank {stream.rank} worker {stream.worker} found no samples in "
                                  f"its share of the shards ({', '.join(source.shards[s] for s, _ in pieces[:3])}"
                                  f"{', ...' if len(pieces) > 3 else ''}): fewer samples than ranks × workers?")
        if not repeat:
            log.warning("source %s: rank %d worker %d read all of its %d samples of epoch %d and starts them again; "
                        "data.train_num_samples is more than the shards hold, or they are uneven",
                        source.name, stream.rank, stream.worker, read, epoch)


def stream_pieces(order: list[int], counts: tuple[int | None, ...], stream: Stream) -> list[tuple[int, range]]:
    """The (shard, positions in it) a stream reads of shards in ``order``.

    Where the stats files give the shards' sample counts (those without one are taken to hold the
    mean of the others), the shards in order are one run of samples, and stream ``s`` of ``S``
    takes the ``s``-th of ``S`` equal stretches of it: the streams' shares differ by at most one
    sample, whatever the shard sizes. Where no count is known, each shard is cut into
    ``ceil(S / shards)`` interleaved parts and stream ``s`` takes parts ``s, s + S, ...``.
    """
    known = [c for c in counts if c is not None]
    if not known:
        parts = math.ceil(stream.count / len(order))
        return [(order[p % len(order)], range(p // len(order), EVERY_SAMPLE.stop, parts))
                for p in range(stream.index, len(order) * parts, stream.count)]
    mean = round(sum(known) / len(known))
    sizes = [counts[shard] if shard < len(counts) and counts[shard] is not None else mean for shard in order]
    total = sum(sizes)
    low, high = total * stream.index // stream.count, total * (stream.index + 1) // stream.count
    pieces, offset = [], 0
    for shard, size in zip(order, sizes):
        start, stop = max(low, offset), min(high, offset + size)
        if start < stop:
            pieces.append((shard, range(start - offset, stop - offset)))
        offset += size
    return pieces


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
