"""pcgen, the product: the `pcgen` command line, the offline demo and the tiny-LM trainer, on top of pc_core."""

from pc_core.version import __version__

__all__ = ["__version__"]
