"""On-disk feature cache: one folder per key, streamed to disk in chunks, published atomically, verified on read.

An entry is valid only once its folder carries its final name and a `meta.json` that matches the arrays; while
it is written (utils/features/writer.py) it lives in a hidden `.KEY.partial` folder that is never read as an entry.
meta.json keeps an xxh3 checksum of every block of rows and of the labels and index; each run verifies what it
reads (about a tenth of the time of one pass over the features: bench/cache_verify.py), and an entry whose
contents changed on disk is reported in one line and encoded again.
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
import xxhash

from utils.atomic import write_json
from utils.errors import UserError

FORMAT_VERSION = 1
CHECK_ROWS = 65536  # rows per checksummed block of features.npy
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


def _digest(array: np.ndarray) -> str:
    data = np.ascontiguousarray(array)
    return xxhash.xxh3_64_hexdigest(memoryview(data).cast("B") if data.size else b"")


def _block_digests(features: np.ndarray) -> list[str]:
    """The digest of every block of CHECK_ROWS rows (one block for an empty array)."""
    return [_digest(features[start : start + CHECK_ROWS]) for start in range(0, max(len(features), 1), CHECK_ROWS)]


def checksums(folder: Path) -> dict[str, Any]:
    """The checksums of a finished entry's arrays: features.npy per block of CHECK_ROWS rows, labels, index."""
    features = np.load(folder / "features.npy", mmap_mode="r")
    labels, index = np.load(folder / "labels.npy"), np.load(folder / "index.npy")
    return {"algorithm": "xxh3_64", "block_rows": CHECK_ROWS, "features": _block_digests(features),
            "labels": _digest(labels), "index": _digest(index)}  # fmt: skip


def damage(entry: CachedFeatures, sums: dict[str, Any]) -> str | None:
    """What in `entry` differs from its checksums, or None when every block matches."""
    if sums.get("algorithm") != "xxh3_64" or sums.get("block_rows") != CHECK_ROWS:
        return f"checksums of an unknown kind ({sums.get('algorithm')}, {sums.get('block_rows')} rows)"
    for name in ("labels", "index"):
        if _digest(getattr(entry, name)) != sums.get(name):
            return f"{name}.npy does not match its checksum"
    saved, found = sums.get("features", []), _block_digests(entry.features)
    if len(saved) != len(found):
        return f"features.npy has {len(found)} blocks of rows, its checksums {len(saved)}"
    bad = next((b for b, (one, other) in enumerate(zip(saved, found, strict=True)) if one != other), None)
    if bad is None:
        return None
    last = min((bad + 1) * CHECK_ROWS, len(entry.features)) - 1
    return f"rows {bad * CHECK_ROWS}-{last} of features.npy do not match their checksum"


def describe(meta: dict[str, Any]) -> str:
    """An entry's contents in words, for messages: `the global features of digits/test`."""
    name, _, rest = str(meta.get("dataset", "")).partition("|")
    split = rest.partition("|")[0]
    if name:
        return f"the {meta.get('view', 'global')} features of {name}/{split}"
    return f"the text features of {len(meta.get('prompts', []))} prompts" if "prompts" in meta else "a cache entry"


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
        self._checked: dict[str, tuple[tuple, bool]] = {}  # key -> (files' stamp, verified), once per process

    def path(self, key: str) -> Path:
        return self.root / key

    def partial_path(self, key: str) -> Path:
        """Where an interrupted extraction of `key` keeps its progress (see utils/extraction.py)."""
        return self.root / f".{key}.partial"

    @contextmanager
    def lock(self, key: str, name: str = "") -> Iterator[None]:
        """Exclusive right to extract `key` (`name`: what it holds, for the message): a second run waits here, then
        finds the entry in the cache."""
        folder = self.root / ".locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{key}.lock", "a+") as handle:
            if not _try_lock(handle):
                what = name or f"cache entry {key}"
                print(f"waiting for another run that is extracting {what} ({self.path(key)}) ...", file=sys.stderr)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record(self, meta: dict[str, Any], rows: int, dim: int) -> dict[str, Any]:
        """The meta.json of a complete entry."""
        return {**meta, "rows": rows, "dim": dim, "dtype": self.dtype, "complete": True, "created": time.time()}

    def load(self, key: str) -> CachedFeatures | None:
        """The entry for `key`, or None when it is absent, incomplete or damaged (its contents differ from their
        checksums: said in one line, once, and the caller encodes it again)."""
        folder = self.path(key)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            features = np.load(folder / "features.npy", mmap_mode="r")
            labels, index = np.load(folder / "labels.npy"), np.load(folder / "index.npy")
            stamp = _stamp(folder)
        except (OSError, ValueError):
            return None
        rows = meta.get("rows")
        shapes_match = features.shape == (rows, meta.get("dim")) and len(labels) == len(index) == rows
        if not (meta.get("complete") and shapes_match):
            return None
        entry = CachedFeatures(features, labels, index, meta)
        checked = self._checked.get(key)
        if checked is None or checked[0] != stamp:
            verified = self._verify(key, entry)
            checked = (_stamp(folder), verified)  # after _verify, which may have written meta.json
            self._checked[key] = checked
        return entry if checked[1] else None

    def _verify(self, key: str, entry: CachedFeatures) -> bool:
        """Whether `entry` matches its checksums; an entry written before checksums were kept gets them now."""
        sums = entry.meta.get("checksums")
        if sums is None:
            meta = {**entry.meta, "checksums": checksums(self.path(key))}
            write_json(self.path(key) / "meta.json", meta)
            entry.meta = meta
            print(f"cache entry {key} ({describe(meta)}) predates checksums: checksummed now, as it is (delete the "
                  f"folder to encode it again)", file=sys.stderr)  # fmt: skip
            return True
        problem = damage(entry, sums)
        if problem:
            print(f"cache entry {key} ({describe(entry.meta)}) is damaged: {problem}; encoding it again",
                  file=sys.stderr)  # fmt: skip
        return problem is None

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


def _stamp(folder: Path) -> tuple:
    """Every file of an entry folder by modification time and size: what changes when anything is rewritten."""
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.iterdir()))


def _try_lock(handle: Any) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
