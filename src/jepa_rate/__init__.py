"""jepa_rate: a fast, numerically trustworthy coding-rate regularizer and seq-JEPA building blocks."""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
