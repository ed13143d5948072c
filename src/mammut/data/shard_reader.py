"""One tar shard read as its samples are stored: each sample's files by extension, or the problem
that made part of the shard unreadable.

webdataset opens the shard (``gopen``: a local file, a ``pipe:`` command, a URL) and walks its
members (``tar_file_iterator``); members are grouped into samples by key as img2dataset writes
them, ``<key>.jpg``, ``<key>.txt``, ``<key>.json`` one after another. Nothing is decoded here.

Whatever goes wrong with a shard becomes one ``Entry`` with a ``problem`` naming the shard (and the
sample, where there is one), so that the reader downstream counts it as one skipped sample or
stops with that message:

- a shard that cannot be opened (missing file, failing command);
- a truncated tar: the sample being read when the tar ended, named;
- a tar that ends cleanly between samples but holds fewer samples than its ``_stats.json`` says.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import webdataset as wds
from webdataset.tariterators import base_plus_ext, tar_file_iterator

EVERY_SAMPLE = range(sys.maxsize)


@dataclass
class Entry:
    """One sample of a shard: its files (``{"jpg": b"...", "txt": b"..."}``), or a problem."""

    shard: str
    key: str
    files: dict[str, bytes] = field(default_factory=dict)
    problem: str | None = None

    @property
    def name(self) -> str:
        """How messages name it: ``shard.tar`` or ``shard.tar, key 000010042``."""
        return f"{self.shard}, key {self.key}" if self.key else self.shard


def read_shard(shard: str, positions: range = EVERY_SAMPLE, expected: int | None = None) -> Iterator[Entry]:
    """The samples of ``shard`` at ``positions`` (their places in the tar, from 0), in stored order,
    so that several readers can split one shard; reading stops after the last position asked for.

    A problem (the shard cannot be opened, is truncated or unreadable, or ends before the
    ``expected`` samples of its stats file) comes as one more ``Entry``, from the reader whose
    positions hold the first sample that could not be read, so that it is reported once per shard.
    """
    samples = 0  # whole samples passed so far: the position of the one being read

    def owned() -> bool:
        return samples in positions

    try:
        stream = wds.gopen(shard)
    except Exception as error:  # noqa: BLE001 (gopen raises whatever its scheme's opener raises)
        if owned():
            yield Entry(shard, "", problem=f"cannot open shard ({type(error).__name__}: {error})")
        return
    current = None
    try:
        for member in tar_file_iterator(stream):
            key, extension = base_plus_ext(member["fname"])
            if key is None:
                continue
            if current is not None and current.key != key:
                if owned():
                    yield current
                samples, current = samples + 1, None
                if samples >= positions.stop:
                    return
            if current is None:
                current = Entry(shard, key)
            current.files[extension.lower()] = member["data"]
    except Exception as error:  # noqa: BLE001 (tarfile's ReadError, and whatever the stream raises)
        if owned():
            where = "in this sample" if current is not None else f"after {samples} samples"
            yield Entry(shard, current.key if current else "",
                        problem=f"shard is truncated or unreadable {where} ({type(error).__name__}: {error})")
        return
    finally:
        problem = _close(stream)
    if current is not None:
        if owned():
            yield current
        samples += 1
    if problem and owned():
        yield Entry(shard, "", problem=problem)
    elif expected is not None and samples < expected and owned():
        yield Entry(shard, "", problem=f"shard ends after {samples} of the {expected} samples its stats file lists")


def _close(stream) -> str | None:
    """Close a shard's stream; a ``pipe:`` command that failed says so only now."""
    try:
        stream.close()
    except Exception as error:  # noqa: BLE001 (a pipe's exit status, or the file system's error)
        return f"shard's stream failed ({type(error).__name__}: {error})"
    return None
