"""The generic registry: REST storage of every kind over the object store.

``slurmlink.resources`` holds the API machinery (kinds, strategies, errors, watch events) and imports
no store code, so clients, the gateway and the CLI load without SQLAlchemy; this package is where the
machinery meets the store, and only servers import it.
"""
