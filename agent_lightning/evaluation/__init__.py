"""Evaluation across checkpoints: the harness, statistics, and reports."""
