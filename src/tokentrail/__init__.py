"""tokentrail: follow each token's encoding through a transformer, against its own vocabulary."""

__version__ = "0.1.0"
