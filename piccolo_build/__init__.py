"""piccolo-build: renders, bundles, builds and signs Piccolo OS (Flatcar + piccolod)."""

__version__ = "0.1.0"
