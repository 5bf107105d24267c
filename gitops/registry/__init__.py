"""The model registry on git tags: runs, releases, archives, versions, stages, gates, reports."""
