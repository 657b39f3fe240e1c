"""Data, training, evaluation, distribution, tuning and batch jobs: everything with files or strategies."""
