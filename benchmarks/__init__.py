"""Throughput harnesses: ratios of taxabench's paths to the authors' configuration, measured in one run."""
