"""Training: the one epoch loop, towers and the frozen check, checkpoints and the score contract, the fine-tuning
objectives, CLIP fine-tuning, the image classifier, and logistic regression on frozen features."""
