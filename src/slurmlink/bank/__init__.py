"""Allocation banking: service units per Slurm account."""
