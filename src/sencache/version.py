"""The package version, in one place (the CLI and result files record it)."""

__version__ = "0.1.0"
