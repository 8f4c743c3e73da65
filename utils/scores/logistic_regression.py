"""Linear probe: multinomial logistic regression on frozen features, C chosen on a held-out part of train.

Same objective as scikit-learn's LogisticRegression (C · Σ cross-entropy + ½‖W‖², intercept unpenalised),
solved with full-batch L-BFGS in torch so it runs on a GPU; the bank is read block by block (float16 stays float16).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from utils.arrays import as_array

if TYPE_CHECKING:
    import torch  # imported where fitted: the score registry builds the scripts' flags, and --help skips torch

DEFAULT_CS = tuple(float(c) for c in np.logspace(-3, 4, 8))
HOLDOUT = 0.2
ROW_CHUNK = 65536


@dataclass
class LinearProbe:
    weight: np.ndarray  # K x D
    bias: np.ndarray  # K
    C: float  # inverse regularisation strength
    validation_accuracy: float | None = None

    def logits(self, features: object) -> np.ndarray:
        x = as_array(features, np.float64)
        return x @ self.weight.T + self.bias

    def accuracy(self, features: object, labels: np.ndarray) -> float:
        return float(np.mean(self.logits(features).argmax(axis=1) == np.asarray(labels)))


Blocks = list[tuple["torch.Tensor", "torch.Tensor"]]  # (features in their stored dtype, int64 labels), on the device
SHOW_ROWS = 20_000  # a fit on this many training rows or more shows its progress


def to_blocks(
    features: object, labels: np.ndarray, device: str | torch.device = "cpu", rows: np.ndarray | None = None
) -> Blocks:
    """Rows of a (memory-mapped) feature bank as device tensors in ROW_CHUNK blocks, float16 kept as float16.

    `rows` (a boolean mask) keeps a subset. The bank is read once, block by block: never a float32 copy of it whole.
    """
    import torch

    blocks: Blocks = []
    labels = np.asarray(labels, dtype=np.int64)
    for start in range(0, len(labels), ROW_CHUNK):
        x = np.asarray(features[start : start + ROW_CHUNK])
        x = x if x.dtype in (np.float16, np.float32) else x.astype(np.float32)
        y = labels[start : start + ROW_CHUNK]
        if rows is not None:
            keep = rows[start : start + ROW_CHUNK]
            x, y = x[keep], y[keep]
        if len(y):
            blocks.append((torch.from_numpy(np.array(x)).to(device), torch.from_numpy(y.copy()).to(device)))
    return blocks


def train_logistic_regression(
    blocks: Blocks,
    classes: int,
    C: float,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 500,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean CE + ‖W‖² / (2 C N), i.e. scikit-learn's objective divided by C·N, over all blocks' rows."""
    import torch
    import torch.nn.functional as F

    n, dim = sum(len(y) for _, y in blocks), blocks[0][0].shape[1]
    device = blocks[0][0].device
    weight = torch.zeros(classes, dim, dtype=torch.float32, device=device)
    bias = torch.zeros(classes, dtype=torch.float32, device=device)
    if init is not None:
        weight, bias = init[0].clone(), init[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimiser = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-7,
        tolerance_change=1e-10, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        total = 0.0
        for x, y in blocks:  # gradient accumulation keeps memory at one block of logits
            loss = F.cross_entropy(x.float() @ weight.T + bias, y, reduction="sum") / n
            loss.backward()
            total += loss.item()
        penalty = (weight**2).sum() / (2.0 * C * n)
        penalty.backward()
        return torch.tensor(total + penalty.item())

    with _few_threads_if_small(n * dim, device):
        optimiser.step(closure)
    return weight.detach(), bias.detach()


def block_accuracy(blocks: Blocks, weight: torch.Tensor, bias: torch.Tensor) -> float:
    correct = sum(((x.float() @ weight.T + bias).argmax(1) == y).sum().item() for x, y in blocks)
    return correct / sum(len(y) for _, y in blocks)


SMALL_PROBLEM = 5_000_000  # features.numel() below which one CPU thread beats several (thread start-up dominates)


@contextmanager
def _few_threads_if_small(entries: int, device: torch.device) -> Iterator[None]:
    """L-BFGS on a small CPU problem runs ~7x faster on one thread than on two (measured on a 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    if device.type == "cpu" and entries < SMALL_PROBLEM:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _split(labels: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    stratify = labels if np.bincount(labels).min() >= 2 else None
    return train_test_split(index, test_size=holdout, random_state=seed, stratify=stratify)


def fit_linear_probe(
    features: object,
    labels: np.ndarray,
    Cs: Sequence[float] = DEFAULT_CS,
    holdout: float = HOLDOUT,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> LinearProbe:
    """The CLIP paper's protocol: pick C on a held-out split of train, then refit on all of train with it."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0 or labels.min() < 0:
        raise ValueError("a linear probe needs labelled training features (labels >= 0)")
    classes = int(labels.max()) + 1
    best_c, best_accuracy = float(Cs[0]), -1.0
    if len(Cs) > 1:
        fit_idx, val_idx = _split(labels, holdout, seed)
        fit_rows, val_rows = np.zeros(len(labels), bool), np.zeros(len(labels), bool)
        fit_rows[fit_idx], val_rows[val_idx] = True, True
        fit_blocks, val_blocks = (
            to_blocks(features, labels, device, fit_rows),
            to_blocks(features, labels, device, val_rows),
        )
        state = None
        show = len(labels) >= SHOW_ROWS  # seconds per C from here on: say what is going on
        for c in tqdm(sorted(Cs), desc="linear probe: choosing C", unit="C", disable=not show, dynamic_ncols=True):
            # warm start along increasing C
            state = train_logistic_regression(fit_blocks, classes, c, init=state)
            accuracy = block_accuracy(val_blocks, *state)
            if accuracy > best_accuracy:  # ties keep the smaller C (stronger regularisation)
                best_c, best_accuracy = float(c), accuracy
        del fit_blocks, val_blocks
    weight, bias = train_logistic_regression(to_blocks(features, labels, device), classes, best_c)
    return LinearProbe(
        weight=weight.cpu().double().numpy(),
        bias=bias.cpu().double().numpy(),
        C=best_c,
        validation_accuracy=best_accuracy if len(Cs) > 1 else None,
    )
