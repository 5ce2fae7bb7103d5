"""Identity of the DWS API group."""

GROUP = "dataworkflowservices.github.io"
#: Served versions; v1alpha2 is what the upstream Slurm plugin sends, v1alpha7 is newest and stored.
VERSIONS = ("v1alpha7", "v1alpha2")
STORAGE_VERSION = "v1alpha7"
WORKFLOW_FINALIZER = f"{GROUP}/workflow"
