"""The inference server behind `gitops serve`: TF Serving's REST shapes over a jitted, warmed model.

`version` wraps one loaded model version (signature, jitted predict, warm-up), `batcher` groups
concurrent requests into padded batches, `follower` polls a stage and swaps versions atomically,
`metrics` keeps the Prometheus counters and `server` is the Starlette app tying them together.
Nothing here is imported by the CLI until `gitops serve` runs.
"""
