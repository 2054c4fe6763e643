"""pyoverlay: a Docker remote network + IPAM driver."""

__version__ = "0.1.0"
