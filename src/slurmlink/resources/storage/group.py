"""Identity of slurmlink's own API group, for kinds DWS has no counterpart of (storage pools, profiles)."""

GROUP = "slurmlink.io"
VERSION = "v1"
