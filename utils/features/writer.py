"""Resumable, sharded extraction into the feature cache.

An entry being extracted lives in `.KEY.partial/`: one memory-mapped features.npy that every rank (one process
per GPU under torchrun, or just one) fills at its own rows, and per rank a progress file (rows done, labels,
unreadable images) rewritten atomically every CHECKPOINT_SECONDS, after the features it covers are flushed. A
killed run resumes from its last checkpoint. When every rank is done, rank 0 compacts the rows, writes meta.json
and renames the folder onto the entry's name: readers never see a partial entry.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from utils.atomic import atomic_path, fsync, write_json
from utils.distributed import World, barrier, from_main
from utils.features.store import FeatureCache, checksums, finish_rows

CHECKPOINT_SECONDS = 30.0


def shard_rows(rows: int, batch_size: int, rank: int, world_size: int) -> range:
    """Rank `rank`'s contiguous rows, cut at batch boundaries: every rank sees the batches a single process would."""
    batches = -(-rows // batch_size)
    start = rank * batches // world_size * batch_size
    stop = (rank + 1) * batches // world_size * batch_size
    return range(min(start, rows), min(stop, rows))


def prepare_partial(folder: Path, spec: dict[str, Any]) -> int:
    """Reuse `folder` if an earlier run left it with the same layout, else start it afresh; rows already done."""
    try:
        resumable = json.loads((folder / "spec.json").read_text()) == spec
        features = np.load(folder / "features.npy", mmap_mode="r")
        resumable = resumable and features.shape == (spec["rows"], spec["dim"]) and features.dtype == spec["dtype"]
        del features
    except (OSError, ValueError):
        resumable = False
    if resumable:
        os.utime(folder)  # resumed now: no other run's clean-up may take it for abandoned
        return sum(_load_progress(folder, r, spec)[0] for r in range(spec["world_size"]))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    features = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=spec["dtype"],
                                         shape=(spec["rows"], spec["dim"]))  # fmt: skip
    del features
    write_json(folder / "spec.json", spec)  # last: a folder without it is never resumed
    return 0


def _progress_path(folder: Path, rank: int) -> Path:
    return folder / f"rank{rank}.npz"


def _load_progress(folder: Path, rank: int, spec: dict[str, Any]) -> tuple[int, np.ndarray, np.ndarray, list]:
    """(rows done, labels, valid mask, skipped images) of one rank's shard; nothing done if it has no record."""
    rows = shard_rows(spec["rows"], spec["batch_size"], rank, spec["world_size"])
    try:
        with np.load(_progress_path(folder, rank)) as saved:
            done, labels, valid = int(saved["done"]), saved["labels"], saved["valid"]
            skipped = json.loads(str(saved["skipped"]))
        if len(labels) == len(valid) == len(rows) and 0 <= done <= len(rows):
            return done, labels, valid, skipped
    except (OSError, ValueError, KeyError):
        pass
    return 0, np.full(len(rows), -1, dtype=np.int64), np.zeros(len(rows), dtype=bool), []


class ShardWriter:
    """One rank's view of a partial entry: writes its rows in order and checkpoints how far it got."""

    def __init__(self, folder: Path, rank: int, spec: dict[str, Any]):
        self.folder, self.rank = folder, rank
        self.rows = shard_rows(spec["rows"], spec["batch_size"], rank, spec["world_size"])
        self.done, self.labels, self.valid, self.skipped = _load_progress(folder, rank, spec)
        self.features = np.load(folder / "features.npy", mmap_mode="r+")
        self.saved_at = time.time()

    @property
    def next_row(self) -> int:
        """The first dataset row this rank still has to encode."""
        return self.rows.start + self.done

    def write(self, positions: np.ndarray, features: np.ndarray, labels: np.ndarray, count: int,
              skipped: list[dict[str, str]]) -> None:  # fmt: skip
        """Rows `positions` (dataset order) of the next `count` rows, the others of which could not be read."""
        self.features[positions] = features
        self.labels[positions - self.rows.start] = labels
        self.valid[positions - self.rows.start] = True
        self.skipped += skipped
        self.done += count
        if time.time() - self.saved_at > CHECKPOINT_SECONDS:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Flush the features, then record the rows they cover: the record never runs ahead of the data."""
        self.features.flush()
        with atomic_path(_progress_path(self.folder, self.rank)) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, done=self.done, labels=self.labels, valid=self.valid, skipped=json.dumps(self.skipped))
        self.saved_at = time.time()

    def close(self) -> None:
        self.checkpoint()
        self.features = None


def publish_partial(cache: FeatureCache, key: str, spec: dict[str, Any], meta: dict[str, Any]) -> None:
    """Rank 0, once every rank closed its shard: assemble labels in dataset order and rename onto the entry."""
    folder, labels, valid, skipped = cache.partial_path(key), [], [], []
    for rank in range(spec["world_size"]):
        done, rank_labels, rank_valid, rank_skipped = _load_progress(folder, rank, spec)
        expected = len(shard_rows(spec["rows"], spec["batch_size"], rank, spec["world_size"]))
        if done != expected:
            raise RuntimeError(f"rank {rank} encoded {done} of its {expected} rows of cache entry {key}")
        labels.append(rank_labels)
        valid.append(rank_valid)
        skipped += rank_skipped
    (folder / "spec.json").unlink()  # from here on the folder is no longer resumable: compaction rewrites rows
    for item in [*(_progress_path(folder, r) for r in range(spec["world_size"])), *folder.glob(".*.tmp")]:
        item.unlink(missing_ok=True)
    kept = finish_rows(folder, np.concatenate(labels), np.concatenate(valid))
    record = {**cache.record({**meta, "skipped": skipped}, kept, spec["dim"]), "checksums": checksums(folder)}
    (folder / "meta.json").write_text(json.dumps(record, indent=2, default=str))
    for item in folder.iterdir():
        fsync(item)
    final = cache.path(key)
    if final.exists():  # an invalid leftover (the lock rules out a concurrent writer)
        shutil.rmtree(final)
    os.rename(folder, final)


@contextmanager
def entry_writer(
    cache: FeatureCache, key: str, spec: dict[str, Any], meta: dict[str, Any], world: World, name: str
) -> Iterator[ShardWriter | None]:
    """This rank's writer of entry `key` (None when another run finished it meanwhile); published on exit.

    Every rank of `world` must enter. Rank 0 holds the entry's lock, resumes or starts its partial folder and,
    once every rank closed its shard, publishes it. An exception leaves the partial folder to be resumed.
    """
    with cache.lock(key, name) if world.main else nullcontext():
        if from_main(cache.load(key) is not None, world):
            yield None
        else:
            if world.main:
                cache.clean_stale()
                done = prepare_partial(cache.partial_path(key), spec)
                if done:
                    print(f"resuming {name} at row {done} of {spec['rows']} (an earlier run was interrupted)",
                          file=sys.stderr)  # fmt: skip
            barrier(world)
            shard = ShardWriter(cache.partial_path(key), world.rank, spec)
            yield shard
            shard.close()
            barrier(world)
            if world.main:
                publish_partial(cache, key, spec, meta)
    barrier(world)
