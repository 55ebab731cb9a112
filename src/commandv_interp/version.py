"""The package version (what artifacts record as ``library_version``)."""

__version__ = "0.1.0"
