"""Training on JAX: architectures, data pipelines, optimizers, steps, checkpoints, metrics."""
