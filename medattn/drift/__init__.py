"""Drift detection: features, two-sample tests, reports."""
