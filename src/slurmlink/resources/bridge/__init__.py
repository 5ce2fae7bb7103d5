"""The job bridge's kinds: ``slurmlink.io/v1`` SlurmJob and Partition, the seed's ``wlm.sylabs.io``
SlurmJob, and the virtual core Nodes that show each Partition as the seed's virtual kubelets did."""
