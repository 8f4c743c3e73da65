"""Datasets: the registry of names, building a split (class names, subsets, identity), and safe batched loading."""

from utils.data.splits import DataOptions, LoadedDataset, load_dataset
from utils.data.registry import DATASETS, FOLDER_PREFIX, DatasetSpec, get_spec

__all__ = ["DATASETS", "FOLDER_PREFIX", "DataOptions", "DatasetSpec", "LoadedDataset", "get_spec", "load_dataset"]
