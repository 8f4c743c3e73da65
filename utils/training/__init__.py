"""Training (a leaf only the scripts import): the epoch loop and its settings, towers, checkpoints, objectives."""
