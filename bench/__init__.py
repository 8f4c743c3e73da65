"""Benchmarks: `python -m bench.<name> [--smoke]` prints a markdown table (medians over repeats)."""
