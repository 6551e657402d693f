"""Numerical core of the metrics: top-K SVD with an accuracy contract, and the metric functions."""
