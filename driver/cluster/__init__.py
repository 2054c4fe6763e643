"""Cluster facts shared by every host of a multi-host (overlay) setup, behind one store contract."""
