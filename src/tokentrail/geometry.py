"""``tt.geometry``: what dominates cosine, and the exact corrections (the maths lives in
:mod:`tokentrail.engine.geometry`; ``trajectory_map`` is :func:`tokentrail.maps.trajectory_map`)."""

from tokentrail.engine.geometry import *  # noqa: F403 (the module's __all__)
from tokentrail.engine.geometry import __all__ as _geometry_names
from tokentrail.present.maps import trajectory_map

__all__ = [*_geometry_names, "trajectory_map"]
