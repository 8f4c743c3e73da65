"""Atomic file and folder writes: a crash never leaves a half-written file under its final name.

What is published gets the permissions of a file or folder created the usual way (the umask's): the temporary
files that tempfile makes are private (0600), which would hide every result from colleagues on a shared machine.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it becomes `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        for item in tmp.iterdir():
            fsync(item)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
            # a concurrent run published the same entry first; its content is equally valid
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fetch_whole(path: str | Path, fetch: Callable[[Path], None]) -> None:
    """`fetch(staging)` leaves a `path.name` folder inside a temporary folder beside `path` (a downloader that
    extracts an archive into a root); it becomes `path` only if `fetch` succeeds, so a half-fetched archive never
    lands under its name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        fetch(staging)
        (staging / path.name).replace(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    """The process's umask (read by setting it and putting it back: there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync(path: Path) -> None:
    """Flush a file's data to disk, so a rename never publishes a file whose bytes are still in flight."""
    if path.is_file():
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
