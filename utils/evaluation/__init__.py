"""Evaluation: the pipeline (plan, encode, score, measure), score inputs, metrics, reports and figures."""
