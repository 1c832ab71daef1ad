"""Shared loading layer: configuration errors, models and data. Imported by everything else."""
