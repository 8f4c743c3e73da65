"""Shared building blocks of the toolkit: models, data, prompts, features, scores, metrics."""
