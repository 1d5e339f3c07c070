"""sharkrec: compress the embedding layer of recommendation models."""

from sharkrec.errors import SharkrecError

__all__ = ["SharkrecError", "__version__"]
__version__ = "0.1.0"
