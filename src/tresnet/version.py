"""The package version: one place, read by ``pyproject.toml``, checkpoints and reports."""

__version__ = "0.1.0"
