"""On-disk feature cache: one folder per key, streamed to disk in chunks, published atomically.

An entry is valid only once its folder carries its final name and a `meta.json` that matches the arrays; while
it is written (utils/extraction.py) it lives in a hidden `.KEY.partial` folder that is never read as an entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.errors import UserError

FORMAT_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
STALE_TMP_SECONDS = 24 * 3600
STALE_PARTIAL_SECONDS = 7 * 24 * 3600


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hash of everything that determines the features."""
    blob = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class CachedFeatures:
    """Features of the images that loaded, in dataset order, with their labels and dataset positions."""

    features: np.ndarray  # N x D, L2-normalised, float16 or float32 (memory-mapped)
    labels: np.ndarray  # N, int64 (-1 where the dataset has no labels)
    index: np.ndarray  # N, positions in the dataset
    meta: dict[str, Any]

    @property
    def skipped(self) -> list[dict[str, str]]:
        return self.meta.get("skipped", [])


def finish_rows(folder: Path, labels: np.ndarray, valid: np.ndarray) -> int:
    """Drop the rows that never got a feature from `folder`/features.npy; save labels.npy and index.npy."""
    keep = np.flatnonzero(valid)
    if len(keep) < len(valid):
        features = np.load(folder / "features.npy", mmap_mode="r")
        compact = np.lib.format.open_memmap(
            folder / "features.compact.npy", mode="w+", dtype=features.dtype, shape=(len(keep), features.shape[1])
        )
        for start in range(0, len(keep), 65536):
            rows = keep[start : start + 65536]
            compact[start : start + len(rows)] = features[rows]
        compact.flush()
        del compact, features
        (folder / "features.compact.npy").replace(folder / "features.npy")
    np.save(folder / "labels.npy", labels[keep])
    np.save(folder / "index.npy", keep.astype(np.int64))
    return len(keep)


class FeatureCache:
    """Features keyed by `cache_key(...)` under `root`, stored as float16 (default) or float32."""

    def __init__(self, root: str | Path, dtype: str = "float16"):
        if dtype not in DTYPES:
            raise UserError(f"unknown feature dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
        self.root, self.dtype = Path(root), dtype

    def path(self, key: str) -> Path:
        return self.root / key

    def partial_path(self, key: str) -> Path:
        """Where an interrupted extraction of `key` keeps its progress (see utils/extraction.py)."""
        return self.root / f".{key}.partial"

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive right to extract `key`: a second run waits here, then finds the entry in the cache."""
        folder = self.root / ".locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{key}.lock", "a+") as handle:
            if not _try_lock(handle):
                print(f"waiting for another run that is extracting cache entry {key} ...", file=sys.stderr)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record(self, meta: dict[str, Any], rows: int, dim: int) -> dict[str, Any]:
        """The meta.json of a complete entry."""
        return {**meta, "rows": rows, "dim": dim, "dtype": self.dtype, "complete": True, "created": time.time()}

    def load(self, key: str) -> CachedFeatures | None:
        """The entry for `key`, or None when it is absent or incomplete."""
        folder = self.path(key)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            features = np.load(folder / "features.npy", mmap_mode="r")
            labels, index = np.load(folder / "labels.npy"), np.load(folder / "index.npy")
        except (OSError, ValueError):
            return None
        rows = meta.get("rows")
        shapes_match = features.shape == (rows, meta.get("dim")) and len(labels) == len(index) == rows
        if not (meta.get("complete") and shapes_match):
            return None
        return CachedFeatures(features, labels, index, meta)

    def clean_stale(self) -> None:
        """Remove temporary folders (of older versions) left a day ago, and extractions not resumed in a week."""
        if not self.root.is_dir():
            return
        for folder, age in [*((t, STALE_TMP_SECONDS) for t in self.root.glob(".*.tmp")),
                            *((p, STALE_PARTIAL_SECONDS) for p in self.root.glob(".*.partial"))]:  # fmt: skip
            try:
                if time.time() - folder.stat().st_mtime > age:  # a running extraction checkpoints every 30 s
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:  # another run published or removed it meanwhile
                continue


def _try_lock(handle: Any) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
