"""The job bridge: Slurm jobs and partitions served as objects.

Who a job runs as (:mod:`~slurmlink.bridge.owner`) and the files it touches for them, always as that
user and never as root (:mod:`~slurmlink.bridge.files`, whose helper process is
:mod:`~slurmlink.bridge.asuser`); Slurm's jobs read once per tick (:mod:`~slurmlink.bridge.jobview`);
the reconciler (:mod:`~slurmlink.bridge.controller`); partitions published
(:mod:`~slurmlink.bridge.publisher`); uploads, logs and outputs over HTTP (:mod:`~slurmlink.bridge.api`).
"""
