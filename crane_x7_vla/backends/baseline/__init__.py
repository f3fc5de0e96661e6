"""Baseline policies (hold, mean demonstrated trajectory) behind the common backend interface."""
