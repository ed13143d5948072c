"""Shard lists and the files img2dataset writes beside each tar.

A shard list is given as open_clip and webdataset take it: a brace pattern
(``/data/laion/{00000..00999}.tar``), a glob (``/data/cc3m/*.tar``), several of either joined by
``::``, or ``pipe:`` commands (``pipe:aws s3 cp s3://bucket/{00000..00999}.tar -``), whose braces
are expanded too. Beside each local ``<shard>.tar`` img2dataset writes ``<shard>_stats.json``
(``successes``: the samples in the tar) and ``<shard>.parquet`` (one row per download attempt,
with its caption and status).
"""

from __future__ import annotations

import glob
import json
import logging
from pathlib import Path

import webdataset as wds

from mammut.data.errors import DataFormatError

log = logging.getLogger(__name__)

GLOB_CHARACTERS = set("*?[")


def is_local(url: str) -> bool:
    """A path on this machine's file system, as opposed to a ``pipe:`` command or a URL."""
    return not url.startswith("pipe:") and "://" not in url


def expand_shard_patterns(patterns: str) -> list[list[str]]:
    """The shards of each ``::``-separated pattern, in order: braces expanded (webdataset's
    ``expand_urls``, which also substitutes ``WDS_`` environment variables) and local globs matched
    (sorted). A glob that matches nothing is an error naming it; a missing shard named by a brace
    pattern is not (``missing_local_shards`` finds those, and reading counts them as skips)."""
    groups = []
    for pattern in patterns.split("::"):
        pattern = pattern.strip()
        if not pattern:
            raise DataFormatError(f"shard list {patterns!r}: an empty pattern between '::' separators")
        shards = []
        for url in wds.shardlists.expand_urls(pattern):
            if is_local(url) and GLOB_CHARACTERS & set(url):
                matches = sorted(glob.glob(url))
                if not matches:
                    raise DataFormatError(f"shard pattern {url!r}: no file matches it")
                shards.extend(matches)
            else:
                shards.append(url)
        groups.append(shards)
    return groups


def missing_local_shards(shards: list[str]) -> list[str]:
    return [shard for shard in shards if is_local(shard) and not Path(shard).is_file()]


def shard_stem(shard: str) -> Path:
    """``/data/00001.tar`` -> ``/data/00001``, the stem its stats and parquet files share."""
    path = Path(shard)
    return path.with_suffix("") if path.suffix == ".tar" else path


def stats_sample_count(shard: str) -> int | None:
    """The samples img2dataset wrote into a local tar (``successes`` of ``<shard>_stats.json``);
    None where there is no such file (a remote shard, or one written by another tool)."""
    if not is_local(shard):
        return None
    stats = shard_stem(shard).parent / f"{shard_stem(shard).name}_stats.json"
    if not stats.is_file():
        return None
    try:
        count = json.loads(stats.read_text()).get("successes")
    except (OSError, ValueError) as error:
        log.warning("%s: unreadable stats file (%s); the shard's sample count is not checked", stats, error)
        return None
    return count if isinstance(count, int) else None


def parquet_captions(shards: list[str], column: str, limit: int) -> list[str]:
    """Captions from the ``<shard>.parquet`` files of local shards (successful downloads only, where
    the file has img2dataset's ``status`` column), up to ``limit``; a list-valued column gives every
    caption of a row. Shards without a parquet file are passed over."""
    import pyarrow.parquet as pq  # only when asked: reading captions is the one use

    captions: list[str] = []
    for shard in shards:
        path = shard_stem(shard).with_suffix(".parquet")
        if not is_local(shard) or not path.is_file():
            continue
        table = pq.read_table(path)
        if column not in table.column_names:
            raise DataFormatError(f"{path}: no column {column!r} (it has {', '.join(table.column_names)})")
        values = table.column(column).to_pylist()
        statuses = table.column("status").to_pylist() if "status" in table.column_names else ["success"] * len(values)
        for value, status in zip(values, statuses):
            if status != "success":
                continue
            for caption in value if isinstance(value, list) else [value]:
                if isinstance(caption, str) and caption.strip():
                    captions.append(caption.strip())
        if len(captions) >= limit:
            return captions[:limit]
    return captions
