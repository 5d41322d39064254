"""wkd — the wrapped-key daemon."""

__version__ = "0.1.0"
