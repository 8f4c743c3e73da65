"""Benchmarks run in their smoke mode (tiny sizes): each works and its correctness columns say so. Not timed."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import bench

BENCHES = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name != "common")
CHECKS = {
    "extraction": [
        "| forward pass only (batches in memory) | - |",
        "| whole pipeline, pil (decode, preprocess, model, cache write) | 0 |",
        "| whole pipeline, tensor (decode, preprocess, model, cache write) | 0 |",
        "(PIL): True; through the tensor pipeline: True.",
    ],
    "cache_verify": ["verification found no damage", "| verification: xxh3 of every block"],
    "full_table": ["Both ways give identical metrics: True."],
    "knn": ["(within 1e-3)", "sweep vs single search: 0.0e+00", "resident search:", "not measured (no GPU)"],
    "mahalanobis": ["| True | True |"],
    "setar": ["| True |", "Largest difference of a candidate's loss: "],
}


def test_every_benchmark_has_checks():
    assert sorted(CHECKS) == BENCHES


@pytest.mark.parametrize("name", BENCHES)
def test_benchmark_smoke(name, capsys):
    text = importlib.import_module(f"bench.{name}").main(["--smoke"])
    assert text in capsys.readouterr().out
    assert "Machine: " in text and "|---|" in text
    for expected in CHECKS[name]:
        assert expected in text
