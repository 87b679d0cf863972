"""labalign: the LAB method (arXiv 2403.01081), from a taxonomy of seed examples to a tuned model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("labalign")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
