"""Burst buffers: directives, placement and the driver that gives jobs real storage."""
