"""``tt.maps``: 2-D maps of a Run (PCA exact, t-SNE, UMAP optional): token trajectories
through the layers and one head's queries and keys (the code lives in
:mod:`tokentrail.present.maps`)."""

from tokentrail.present.maps import METHODS, check_method, head_map, map_points, pca_2d, project, trajectory_map

__all__ = ["METHODS", "check_method", "head_map", "map_points", "pca_2d", "project", "trajectory_map"]
