"""medblip's version (its own module: modules that record it need not import the package's lazy API)."""

__version__ = "0.1.0"
