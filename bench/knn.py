"""KNN on a float16 feature bank on disk: ours (one streamed pass, any k from one search) against scikit-learn.

python -m bench.knn            # 200k x 512 bank, 10k queries, k = 50 and the sweep 10/50/100/200
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from bench.common import median_seconds, parser, report
from utils.scores import InDistribution, build_score
from utils.scores.knn import distance_from_similarity, top_similarities

SIZES = {"full": (200_000, 10_000, 512), "smoke": (3_000, 200, 64)}
SWEEP = (10, 50, 100, 200)


def unit_rows(rows: int, dim: int, seed: int) -> np.ndarray:
    """Clustered unit vectors, like image features (a few hundred directions plus noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((300, dim))
    x = centres[rng.integers(0, 300, rows)] + 0.8 * rng.standard_normal((rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def gpu_rows(bank: np.ndarray, queries: np.ndarray, k: int, device: str, repeats: int) -> list[tuple[str, object]]:
    """On CUDA: a hand-written all-on-GPU search (the whole bank in fp16, one fp16 matmul + topk per 4,096
    queries) against ours with the bank resident; elsewhere rows that say they were not measured."""
    name = "hand-written: whole bank on the GPU in fp16, fp16 matmul + topk per 4,096 queries"
    if not (device.startswith("cuda") and torch.cuda.is_available()):
        return [(name, "not measured (no GPU)")]
    on_gpu = torch.from_numpy(np.asarray(bank)).to(device)
    q = torch.from_numpy(queries).to(device).half()

    def hand_written() -> None:
        for q0 in range(0, len(q), 4096):
            torch.topk(q[q0 : q0 + 4096] @ on_gpu.T, k, dim=1).values.cpu()
        torch.cuda.synchronize()

    return [(name, median_seconds(hand_written, repeats)[0])]


def main(argv: Sequence[str] | None = None) -> str:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    rows, queries_count, dim = SIZES["smoke" if args.smoke else "full"]
    repeats = 1 if args.smoke else args.repeats
    k = 50
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bank.npy"
        bank = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, dim))
        bank[:] = unit_rows(rows, dim, seed=0)
        bank.flush()
        del bank
        bank = np.load(path, mmap_mode="r")  # as the feature cache hands it to the scores
        queries = unit_rows(queries_count, dim, seed=1)
        knn = build_score("knn", k=max(SWEEP), device=args.device).fit(InDistribution(train_features=bank))
        ours_seconds, ours = median_seconds(lambda: knn.sweep(queries, [k]), repeats)
        sweep_seconds, sweep = median_seconds(lambda: knn.sweep(queries, SWEEP), repeats)
        reference_bank = np.asarray(bank, dtype=np.float32)  # what scikit-learn needs in memory (not timed)
        reference_bank /= np.linalg.norm(reference_bank, axis=1, keepdims=True)

        def sklearn_knn(neighbours: int) -> np.ndarray:
            index = NearestNeighbors(n_neighbors=neighbours, algorithm="brute").fit(reference_bank)
            return index.kneighbors(queries)[0]

        sk_seconds, distances = median_seconds(lambda: sklearn_knn(k), repeats)
        # What scikit-learn does with the cache's float16 array handed over as it is: upcast to float64.
        sk16_seconds, _ = median_seconds(
            lambda: NearestNeighbors(n_neighbors=k, algorithm="brute").fit(bank).kneighbors(queries), repeats
        )
        # The GPU path; on CPU (bfloat16 there) only in the smoke run, for its correctness: CPU runs stream.
        measure = args.smoke or args.device.startswith("cuda")
        resident_seconds, resident = median_seconds(
            lambda: top_similarities(queries, bank, k, args.device, resident=True), repeats
        ) if measure else (float("nan"), np.full((len(queries), k), np.nan))  # fmt: skip
        gpu = gpu_rows(bank, queries, k, args.device, repeats)
    gap = float(np.abs(-ours[k] - distances[:, k - 1]).max())
    resident_gap = float(np.abs(distance_from_similarity(resident[:, k - 1]) - distances[:, k - 1]).max())
    resident_note = f"{resident_gap:.2e} ({'within' if resident_gap <= 1e-3 else 'OUTSIDE'} 1e-3)" if measure else \
        "not measured on CPU at this size (CPU runs stream the bank)"  # fmt: skip
    sweep_gap = float(np.abs(sweep[k] - ours[k]).max())
    per_query = queries_count / 1000

    def row(method: str, ks: str, seconds: float) -> list:
        return [method, ks, seconds, seconds / per_query, sk_seconds / seconds]

    sweep_name = "k=" + "/".join(map(str, SWEEP))
    rows_out = [
        row("scikit-learn NearestNeighbors (brute, float32 in RAM, CPU)", f"k={k}", sk_seconds),
        row("scikit-learn given the float16 bank as is (it upcasts to float64, CPU)", f"k={k}", sk16_seconds),
        row(f"ours (float16 memmap streamed, {args.device})", f"k={k}", ours_seconds),
        row(f"ours, sweep in one search ({args.device})", sweep_name, sweep_seconds),
        row(f"ours, bank held on the device, half-precision search + float32 re-rank ({args.device})", f"k={k}",
            resident_seconds) if measure else ["ours, bank held on the device", f"k={k}", "not measured on CPU", "-",
                                                "-"],
        *[row(name, f"k={k}", seconds) if isinstance(seconds, float) else [name, f"k={k}", seconds, "-", "-"]
          for name, seconds in gpu],
    ]  # fmt: skip
    notes = [
        f"Bank {rows:,} x {dim} float16 on disk, {queries_count:,} queries, median of {repeats} repeat(s).",
        f"Largest |k-th distance difference| ours vs scikit-learn: {gap:.2e} "
        f"({'within' if gap <= 1e-3 else 'OUTSIDE'} 1e-3); sweep vs single search: {sweep_gap:.1e}; resident "
        f"search: {resident_note}.",
    ]
    return report("KNN", ["method", "k", "seconds", "s / 1k queries", "speed-up vs sklearn"], rows_out, notes)


if __name__ == "__main__":
    main()
