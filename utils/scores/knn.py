"""Deep nearest neighbours (Sun et al., ICML 2022): −‖z − z_(k)‖, z_(k) the k-th nearest ID training feature."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from utils.arrays import row_blocks
from utils.scores.base import InDistribution, Score, as_array, l2_normalise
from utils.settings import Setting, positive_int

if TYPE_CHECKING:
    import torch  # imported where searched: the score registry builds the scripts' flags, and --help skips torch

BANK_CHUNK = 65536  # training rows read at once: the bank is streamed from disk, never held whole
QUERY_CHUNK = 1024  # with BANK_CHUNK, bounds the similarity block to 256 MB of float32
RESIDENT_SHARE = 0.5  # a bank is held on a GPU when its float32 and half copies take at most this of free memory
RESIDENT_BLOCK_BYTES = 8 << 30  # the half-precision similarity block of one query block, at most
RERANK_BYTES = 1 << 29  # candidate rows gathered in float32 at once, at most
RERANK_MARGIN = 64  # candidates beyond k from the half-precision search, re-ranked in float32
PAPER_K = 50  # KNN's k for CIFAR-10 (Sun et al., ICML 2022), the default of a score built by hand
K = Setting(
    "k", None, "the k-th nearest ID training feature, one or several k (one neighbour search covers all)",
    "KNN (Sun et al., ICML 2022): k = 50 for CIFAR-10, 1000 for ImageNet-1k (the ID set's knn_k)",
    type=positive_int, select=("k",), nargs="+", metavar="K", default_text="the ID set's: 50, 1000 for imagenet",
)  # fmt: skip


def top_similarities(
    queries: np.ndarray, bank: object, k: int, device: str | torch.device = "cpu", resident: bool | None = None
) -> np.ndarray:
    """The k largest cosine similarities of each (normalised) query to the (normalised) bank, descending.

    On a GPU the bank fits (`resident` None: decided by free memory), it is held there (ResidentBank). Otherwise one
    pass over the bank (a memory-mapped float16 file is fine): each block is read and normalised once and merged
    into every query's running top k, so memory is O(queries · k + one block), not O(bank).
    """
    import torch

    device = torch.device(device)
    if resident is None:
        resident = fits_on_device(len(bank), as_array(bank[:1]).shape[1], device)
    if resident:
        return ResidentBank(bank, device, torch.float16 if device.type == "cuda" else torch.bfloat16).top(queries, k)
    q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(device)
    best: torch.Tensor | None = None  # queries x (at most k), descending
    blocks = -(-len(bank) // BANK_CHUNK)
    for block in tqdm(row_blocks(bank, BANK_CHUNK), total=blocks, desc=f"KNN: {len(queries)} queries", unit="block",
                      disable=blocks < 3, dynamic_ncols=True):  # fmt: skip
        rows = torch.from_numpy(np.array(block, dtype=np.float32)).to(device)  # our own copy: normalised in place
        rows.div_(rows.norm(dim=1, keepdim=True).clamp_min(1e-12))
        merged = []
        for q0 in range(0, len(q_all), QUERY_CHUNK):
            sims = q_all[q0 : q0 + QUERY_CHUNK] @ rows.T
            top = torch.topk(sims, min(k, sims.shape[1]), dim=1).values
            del sims
            if best is not None:  # merge with the running top k: exact, whatever the block sizes
                top = torch.topk(
                    torch.cat([best[q0 : q0 + QUERY_CHUNK], top], dim=1), min(k, best.shape[1] + top.shape[1]), dim=1
                ).values
            merged.append(top)
        best = torch.cat(merged) if merged else q_all.new_zeros((0, 0))
    if best is None:
        raise ValueError("the KNN bank is empty")
    return best.cpu().numpy()


def fits_on_device(rows: int, dim: int, device: str | torch.device) -> bool:
    """Whether a bank of rows x dim can be held on `device` (a GPU, with headroom) in float32 and half precision."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return rows * dim * 6 <= RESIDENT_SHARE * free


class ResidentBank:
    """The whole bank held on the device once, normalised, in float32 and in half precision: each query block is
    one half-precision matmul (tensor cores) and a top-(k + margin), whose candidates are re-ranked in float32, so
    the similarities returned are float32 ones (those of the streamed search, up to summation order)."""

    def __init__(self, bank: object, device: str | torch.device, half: torch.dtype | None = None):
        import torch

        self.device, self.half = torch.device(device), half or torch.float16
        parts = []
        for block in row_blocks(bank, BANK_CHUNK):
            rows = torch.from_numpy(np.array(block, dtype=np.float32)).to(self.device)
            parts.append(rows.div_(rows.norm(dim=1, keepdim=True).clamp_min(1e-12)))
        if not parts:
            raise ValueError("the KNN bank is empty")
        self.rows = torch.cat(parts)
        self.rows_half = self.rows.to(self.half)

    def top(self, queries: np.ndarray, k: int) -> np.ndarray:
        """The k largest cosine similarities of each normalised query, descending: float32 [queries, k]."""
        import torch

        n, dim = self.rows.shape
        k, wanted = min(k, n), min(k + RERANK_MARGIN, n)
        block = int(min(4096, max(1, RESIDENT_BLOCK_BYTES // (2 * n))))
        sub = int(max(1, RERANK_BYTES // (4 * wanted * dim)))
        q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        out = []
        for q0 in range(0, len(q_all), block):
            q = q_all[q0 : q0 + block]
            candidates = torch.topk(q.to(self.half) @ self.rows_half.T, wanted, dim=1).indices
            for s0 in range(0, len(q), sub):  # float32 similarities of the candidates, a few queries at a time
                rows = self.rows[candidates[s0 : s0 + sub]]  # [sub, wanted, dim]
                exact = torch.bmm(rows, q[s0 : s0 + sub, :, None])[:, :, 0]
                out.append(torch.topk(exact, k, dim=1).values.cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, k), np.float32)


def distance_from_similarity(similarity: np.ndarray) -> np.ndarray:
    """Euclidean distance between unit vectors: sqrt(2 − 2 cos)."""
    return np.sqrt(np.maximum(2.0 - 2.0 * similarity.astype(np.float64), 0.0))


class KNN(Score):
    """Deep nearest neighbours (Sun et al., ICML 2022): −‖z − z_(k)‖ over L2-normalised features.

    k = 50 for CIFAR and k = 1000 for the full ImageNet-1k train set in the paper. The bank may be a memory-mapped
    float16 array of any size; it is streamed, and `device` may be a GPU.
    """

    needs = ("train_features",)
    inputs = ("device",)
    settings = (K,)
    sweep_over = "k"

    def __init__(self, k: int = PAPER_K, device: str | torch.device = "cpu"):
        super().__init__()
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k, self.device = int(k), device

    def _fit(self, ind: InDistribution) -> None:
        if len(ind.train_features) < self.k:
            raise ValueError(f"KNN with k={self.k} needs at least k training features, got {len(ind.train_features)}")
        self.bank = ind.train_features

    def __call__(self, features: object) -> np.ndarray:
        return self.sweep(features, [self.k])[self.k]

    def sweep(self, features: object, ks: Sequence[int]) -> dict[int, np.ndarray]:
        """Scores for several k from one neighbour search at the largest k."""
        if not self._fitted:
            raise RuntimeError("KNN must be fit(...) before scoring (it needs train_features)")
        if any(k > self.k for k in ks):
            raise ValueError(f"a sweep can go up to the fitted k={self.k}, asked for {max(ks)}")
        queries = l2_normalise(as_array(features))
        top = top_similarities(queries, self.bank, max(ks), self.device)
        return {k: -distance_from_similarity(top[:, k - 1]) for k in ks}
