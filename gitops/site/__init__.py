"""The static registry site: every model, version, stage, metric, curve and config diff as HTML.

`collect_registry` (data.py) reads the registry through a backend into plain dataclasses;
`build_site` (render.py) turns them into files; charts.py draws the SVGs; serve.py previews them.
Nothing here is imported by the CLI until `gitops site` runs (matplotlib is slow to import).
"""
