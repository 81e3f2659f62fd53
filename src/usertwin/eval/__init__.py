"""Evaluation: predictions on a split, metrics, baselines, reports."""
