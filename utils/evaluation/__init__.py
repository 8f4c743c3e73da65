"""Evaluation: the pipeline (plan, encode, score, measure), score inputs and settings, selection, metrics, reports."""
