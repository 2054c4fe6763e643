"""Side-by-side benchmarks of pyoverlay against Docker's built-in drivers (`scripts/bench`).

Each run starts its own lab (one dockerd in throwaway namespaces, see `tests.lab`),
measures every figure against a baseline taken in the same run, interleaved, and tears
everything down again. Benchmarks are scripts: nothing here fails on a time.
"""
