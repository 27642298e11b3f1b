"""glimpse: a reproducible companion to FishNet, Guided Anchoring, CARAFE and Hybrid Task Cascade.

Importing the package is cheap: submodules are imported where they are used.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
