"""The job bridge: Slurm jobs and partitions served as objects."""
