"""Operating the driver: status, metrics, doctor, logging; none of it changes a network."""
