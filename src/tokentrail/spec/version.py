"""The package version: one home, read by the root package, exports and study manifests."""

__version__ = "0.1.0"
