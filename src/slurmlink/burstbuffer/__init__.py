"""The slurmlink burst-buffer driver: what jobs may ask for (``#DW`` directives) and what they get."""
