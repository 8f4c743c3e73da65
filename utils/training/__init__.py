"""Training: the epoch loop, towers, checkpoints and the score contract, objectives, fine-tuning, probes."""
