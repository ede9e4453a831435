"""Benchmarks that print tables and write bench/results/<name>.json; never asserted on time."""
