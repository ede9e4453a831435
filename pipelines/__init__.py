"""Thin entry points, one per job kind: `python -m pipelines.<kind> [key=value ...]`."""
