"""The metadata gitops reads through the entry points (or, copied into a repository as its plugin
package, through GITOPS_PLUGINS in __init__.py). Imports nothing heavy: `gitops validate` loads this
module without jax; the implementations are named by `build`, relative to this package (".model:..."),
and imported on first use, so the package works under any name."""

from gitops.config.plugins import Plugin

TINY_LINEAR = Plugin(
    name="tiny-linear",
    description="Linear classifier over the flattened inputs and, optionally, their pairwise products.",
    build=".model:TinyLinear",
    params={
        "pairwise": {
            "type": "boolean",
            "default": True,
            "description": "Also feed the products of every pair of input features (makes XOR linearly separable).",
        },
    },
    info={"inputs": "any"},
)

XOR_BLOBS = Plugin(
    name="xor-blobs",
    description="Four Gaussian blobs at (+-1, +-1); the label is whether the two signs differ (XOR).",
    build=".data:xor_blobs",
    params={
        "n_samples": {"type": "integer", "minimum": 8, "maximum": 1_000_000, "default": 400,
                      "description": "Examples to generate."},
        "noise": {"type": "number", "minimum": 0, "default": 0.3, "description": "Standard deviation of each blob."},
    },
    info={"task": "classification", "input_shape": [2], "num_classes": 2, "inputs": "vector"},
)

FEATURE_DROPOUT = Plugin(
    name="feature-dropout",
    description="Zero each input feature of a training example with the given probability.",
    build=".augment:feature_dropout",
    params={
        "probability": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1,
                        "description": "Chance that a feature is zeroed."},
    },
)

BRIER = Plugin(
    name="brier",
    description="Brier score: squared distance between the predicted class probabilities and the one-hot label.",
    build=".metrics:brier",
    higher_is_better=False,
    tasks=("classification",),
)
