"""Burst-buffer storage on the nodes: file-system drivers (``filesystems``) and the daemons they need."""
