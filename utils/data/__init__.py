"""Datasets: the registry of names (registry), building a split (splits: class names, subsets, identity), and safe
batched loading (loaders).

Import the modules directly: this package stays light, so that the scripts' --help imports no torch.
"""
