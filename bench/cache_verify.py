"""The feature cache's checksums: verifying an entry against one reading pass over it, on a 1.3 GB float16 bank.

python -m bench.cache_verify     # 1.27M x 512 float16 (1.3 GB, ImageNet-1k's train bank at ViT-B's width)
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import median_seconds, parser, report
from utils.arrays import row_blocks
from utils.features.store import CHECK_ROWS, FeatureCache, checksums, damage

SIZES = {"full": (1_270_000, 512), "smoke": (20_000, 64)}


def _write_entry(folder: Path, rows: int, dim: int) -> None:
    """A published-looking cache entry: features.npy written block by block, labels, index, meta with checksums."""
    folder.mkdir(parents=True)
    bank = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float16, shape=(rows, dim))
    rng = np.random.default_rng(0)
    for start in range(0, rows, CHECK_ROWS):
        bank[start : start + CHECK_ROWS] = rng.standard_normal((min(CHECK_ROWS, rows - start), dim))
    bank.flush()
    del bank
    np.save(folder / "labels.npy", np.arange(rows, dtype=np.int64) % 1000)
    np.save(folder / "index.npy", np.arange(rows, dtype=np.int64))
    meta = {"complete": True, "rows": rows, "dim": dim, "dtype": "float16", "checksums": checksums(folder)}
    (folder / "meta.json").write_text(json.dumps(meta))


def main(argv: Sequence[str] | None = None) -> str:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    rows, dim = SIZES["smoke" if args.smoke else "full"]
    repeats = 1 if args.smoke else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        _write_entry(Path(tmp) / "entry", rows, dim)
        entry = FeatureCache(tmp).load("entry")  # verified once here, as a run's first read does

        def one_pass() -> float:  # what a KNN scan or a Gaussian fit does with the bank: every block as float32
            return sum(float(np.asarray(block, dtype=np.float32).sum()) for block in row_blocks(entry.features, 65536))

        def blake2b() -> None:
            for block in row_blocks(entry.features, CHECK_ROWS):
                hashlib.blake2b(memoryview(np.ascontiguousarray(block)).cast("B"), digest_size=8).digest()

        passed, _ = median_seconds(one_pass, repeats)
        verified, problem = median_seconds(lambda: damage(entry, entry.meta["checksums"]), repeats)
        blake, _ = median_seconds(blake2b, repeats)
        size = entry.features.nbytes / 2**30
    rows_out = [
        ("one pass over the features (row blocks to float32)", passed, "1.00"),
        ("verification: xxh3 of every block, labels and index (ours)", verified, f"{verified / passed:.2f}"),
        ("the same blocks through hashlib's blake2b (not used)", blake, f"{blake / passed:.2f}"),
    ]
    notes = [f"{rows:,} x {dim} float16 = {size:.2f} GiB, in the page cache (a second read); verification found "
             f"{problem or 'no damage'}. A run verifies each entry once, on its first read."]  # fmt: skip
    return report("Feature-cache verification", ["what", "seconds", "x one pass"], rows_out, notes)


if __name__ == "__main__":
    main()
