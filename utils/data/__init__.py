"""Datasets: the registry of names, folder and built-in datasets, and safe batched loading."""

from utils.data.registry import DATASETS, FOLDER_PREFIX, DatasetSpec, LoadedDataset, get_spec, load_dataset

__all__ = ["DATASETS", "FOLDER_PREFIX", "DatasetSpec", "LoadedDataset", "get_spec", "load_dataset"]
