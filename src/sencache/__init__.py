"""SenCache: sensitivity-aware caching for diffusers video pipelines."""

__version__ = "0.1.0"
