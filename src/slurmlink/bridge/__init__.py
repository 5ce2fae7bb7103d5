"""The job bridge's host side: who a job runs as (:mod:`~slurmlink.bridge.owner`) and the files it
touches for them, always as that user and never as root (:mod:`~slurmlink.bridge.files`, whose helper
process is :mod:`~slurmlink.bridge.asuser`). See docs/job-bridge.md, "Files, as the job's owner".
"""
