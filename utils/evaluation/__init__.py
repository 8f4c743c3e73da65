"""Evaluation: the pipeline (encode -> score -> measure), the resolvers of score inputs, metrics, classification
reports, result files and figures."""
