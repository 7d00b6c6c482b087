"""The ``tokentrail`` command: a thin layer over the public API and ``present/``."""

from tokentrail.cli.commands import app, main

__all__ = ["app", "main"]
