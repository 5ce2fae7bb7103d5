"""slurmlink: Slurm control plane speaking the Kubernetes REST dialect."""

__version__ = "0.1.0"
