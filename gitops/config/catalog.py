"""The one jax-free place where every name a config may use is declared, with its parameters.

Architectures, optimizers, schedules, datasets, augmentations, losses and metrics are declared here
as JSON Schema fragments, each with a lazy "module:attribute" reference to its implementation, in
one `gitops.config.registries.Registry` per kind. `gitops.config.schema` builds `schemas/*.schema.json` from them,
validation uses them without importing jax, and training imports an implementation on first
`Registry.get`. Plugins add entries to the same registries through the same call
(`Registry.add`, see `gitops.config.plugins`); a test imports every built-in's implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any, TypeVar

from gitops.config.jsonschema_tools import boolean, enum, int_list, integer, number
from gitops.config.plugins import Found
from gitops.config.registries import Registry
from gitops.records import record


@record(frozen=True)
class Entry:
    """A registered name: what it is for and the schema of its parameters (`properties`)."""

    name: str
    description: str
    params: dict[str, dict] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)  # facts used by semantic checks


@record(frozen=True)
class Metric:
    """A metric models compute, as `split/name` in histories and metrics.json.

    `higher_is_better` is its direction, declared here (built-ins) or in the plugin's spec and read only
    through `gitops.registry.gates`: best checkpoint, early stopping, sweep ranking, report verdicts and
    `max_regression` gates all follow it; nothing guesses a direction from a metric's name.
    """

    name: str
    higher_is_better: bool
    tasks: tuple[str, ...]
    description: str
    repo_package: str | None = None  # set for a metric from the repository's plugin package


def _plugin_entry(found: Found) -> Entry:
    """A plugin's declaration as a catalog entry (where it came from joins its facts)."""
    plugin = found.plugin
    info = {"inputs": "any", **dict(plugin.info), "plugin": found.distribution}
    if found.repo_package:  # its source hash joins the training fingerprint (config.repo_plugin_package)
        info["repo_package"] = found.repo_package
    if found.kind == "dataset" and found.distribution:
        info.setdefault("package", found.distribution)  # its version joins the data fingerprint
        info.setdefault("kind", "plugin")
    return Entry(plugin.name, plugin.description, dict(plugin.params), tuple(plugin.required), info)


def _plugin_metric(found: Found) -> Metric:
    """A metric plugin's declaration (its direction and tasks)."""
    plugin = found.plugin
    return Metric(plugin.name, bool(plugin.higher_is_better), tuple(plugin.tasks), plugin.description,
                  found.repo_package)


R = TypeVar("R")


def _declare(kind: str, from_plugin: Callable[[Found], R] | None, builds: Mapping[str, str],
             entries: list[R]) -> Registry[R]:
    """The registry of `kind` with its built-in `entries`, each added with its implementation in `builds`."""
    registry: Registry[R] = Registry(kind, from_plugin)
    for entry in entries:
        registry.add(entry, builds.get(entry.name))  # type: ignore[attr-defined]
    return registry


# Where each built-in's implementation lives (imported on first Registry.get; never at validation).
_ARCHITECTURE_BUILDS = {
    "mlp": "gitops.learn.architectures.mlp:MLP",
    "cnn": "gitops.learn.architectures.cnn:CNN",
    "resnet": "gitops.learn.architectures.resnet:ResNet",
    "transformer": "gitops.learn.architectures.transformer:Transformer",
    "decoder": "gitops.learn.architectures.decoder:Decoder",
}
_OPTIMIZER_BUILDS = {name: f"gitops.learn.optim:_{name}" for name in ("sgd", "adam", "adamw", "lion", "lamb", "adafactor")}
_SCHEDULE_BUILDS = {name: f"gitops.learn.optim:_{name}" for name in ("constant", "linear", "cosine", "exponential",
                                                               "piecewise")}
# array datasets: fn(params, root) -> (x, y); "text" loads through gitops.learn.text_data (packed, then streamed)
_DATASET_BUILDS = {
    **{name: f"gitops.learn.data:_{name}" for name in ("digits", "diabetes", "moons", "blobs", "sequences", "file", "url")},
    **{name: "gitops.learn.data:_bundled" for name in ("iris", "wine", "breast_cancer")},
    **{name: "gitops.learn.data:_streamed" for name in ("image_folder", "parquet", "array_record")},
}
_AUGMENTATION_BUILDS = {name: f"gitops.learn.data:_{name}" for name in ("shift", "crop", "flip", "noise")}
_LOSS_BUILDS = {name: f"gitops.learn.metrics:{name}" for name in ("cross_entropy", "mse", "mae", "huber")}


ACTIVATIONS = ["relu", "gelu", "silu", "tanh", "sigmoid", "elu", "leaky_relu"]

# --- architectures (model.yaml) ------------------------------------------------------------------
ARCHITECTURES: Registry[Entry] = _declare("architecture", _plugin_entry, _ARCHITECTURE_BUILDS, [
    Entry(
        "mlp",
        "Multi-layer perceptron; flattens its input.",
        {
            "hidden_sizes": int_list("Width of each hidden layer, input to output.", [128]),
            "activation": enum("Activation after each hidden layer.", ACTIVATIONS, "relu"),
            "dropout": number("Dropout rate after each hidden layer (training only).", 0.0, 0.0, None, None, 1.0),
            "layer_norm": boolean("Apply LayerNorm after each hidden layer.", False),
        },
        info={"inputs": "any"},
    ),
    Entry(
        "cnn",
        "Convolutional network for images: conv blocks with pooling, then dense layers.",
        {
            "channels": int_list("Output channels of each 3x3 conv block.", [32, 64], min_items=1),
            "kernel_size": integer("Square kernel size of every conv.", 3, 1, 11),
            "pool": enum("Pooling after each conv block.", ["max", "avg", "none"], "max"),
            "dense_sizes": int_list("Width of each dense layer after the convs.", [128]),
            "activation": enum("Activation after each layer.", ACTIVATIONS, "relu"),
            "dropout": number("Dropout rate before the classifier.", 0.0, 0.0, None, None, 1.0),
            "batch_norm": boolean("BatchNorm after each conv (batch statistics are checkpointed).", False),
        },
        info={"inputs": "image"},
    ),
    Entry(
        "resnet",
        "Small residual network with BatchNorm for images.",
        {
            "stage_sizes": int_list("Residual blocks in each stage.", [1, 1], min_items=1),
            "width": integer("Channels of the first stage; doubled at each later stage.", 16, 1, 1024),
            "activation": enum("Activation inside the blocks.", ACTIVATIONS, "relu"),
        },
        info={"inputs": "image"},
    ),
    Entry(
        "transformer",
        "Small Transformer encoder classifier over token sequences.",
        {
            "vocab_size": integer("Rows of the token embedding table; every token id must be below it.", 256, 2, 1_000_000),
            "num_layers": integer("Encoder blocks.", 2, 1, 48),
            "num_heads": integer("Attention heads per block.", 4, 1, 64),
            "embed_dim": integer("Model width (divisible by num_heads).", 64, 8, 8192),
            "mlp_dim": integer("Hidden width of each block's MLP.", 128, 8, 32768),
            "dropout": number("Dropout rate.", 0.0, 0.0, None, None, 1.0),
        },
        info={"inputs": "tokens"},
    ),
    Entry(
        "decoder",
        "Decoder-only Transformer language model: RMSNorm, rotary positions, grouped-query attention, SwiGLU.",
        {
            "num_layers": integer("Decoder blocks.", 2, 1, 128),
            "num_heads": integer("Attention (query) heads per block.", 4, 1, 128),
            "num_kv_heads": {"type": ["integer", "null"], "minimum": 1, "maximum": 128, "default": None,
                             "description": "Key/value heads (grouped-query attention); null: one per query head. "
                                            "Must divide num_heads."},
            "embed_dim": integer("Model width (divisible by num_heads; head size even for rotary positions).",
                                 128, 8, 16384),
            "mlp_dim": integer("Hidden width of each block's SwiGLU MLP.", 256, 8, 65536),
            "dropout": number("Dropout rate on the residual branches (training only).", 0.0, 0.0, None, None, 1.0),
            "tie_embeddings": boolean("Use the token embedding as the output projection.", True),
            "rope_base": number("Base of the rotary position frequencies.", 10000.0, None, None, 1.0),
            "attention": enum("auto: jax.nn.dot_product_attention (cuDNN flash attention where available); "
                              "plain: an einsum-softmax path, bit-stable on CPU.", ["auto", "plain"], "auto"),
        },
        info={"inputs": "tokens", "tasks": ["language_modeling"]},
    ),
])

# --- optimizers and schedules (train.yaml) ---------------------------------------------------
_LR = number("Peak learning rate (the schedule scales it).", None, None, None, 0.0)
_WD = number("Decoupled weight decay.", 0.0, 0.0)
_B1 = number("Exponential decay rate of the first moment.", 0.9, 0.0, None, None, 1.0)
_B2 = number("Exponential decay rate of the second moment.", 0.999, 0.0, None, None, 1.0)
_EPS = number("Numerical stability term.", 1e-8, None, None, 0.0)

OPTIMIZERS: Registry[Entry] = _declare("optimizer", None, _OPTIMIZER_BUILDS, [
    Entry(
        "sgd",
        "Stochastic gradient descent, optionally with (Nesterov) momentum.",
        {
            "learning_rate": _LR,
            "momentum": number("Momentum (0 disables it).", 0.0, 0.0, None, None, 1.0),
            "nesterov": boolean("Use Nesterov momentum.", False),
            "weight_decay": _WD,
        },
        ("learning_rate",),
    ),
    Entry("adam", "Adam.", {"learning_rate": _LR, "b1": _B1, "b2": _B2, "eps": _EPS}, ("learning_rate",)),
    Entry(
        "adamw",
        "Adam with decoupled weight decay.",
        {"learning_rate": _LR, "b1": _B1, "b2": _B2, "eps": _EPS, "weight_decay": number("Decoupled weight decay.", 1e-4, 0.0)},
        ("learning_rate",),
    ),
    Entry(
        "lion",
        "Lion (sign momentum); use a learning rate 3-10x smaller than AdamW's.",
        {"learning_rate": _LR, "b1": _B1, "b2": number("Momentum decay.", 0.99, 0.0, None, None, 1.0), "weight_decay": _WD},
        ("learning_rate",),
    ),
    Entry(
        "lamb",
        "LAMB (layer-wise adaptive large-batch optimizer).",
        {"learning_rate": _LR, "b1": _B1, "b2": _B2, "eps": number("Numerical stability term.", 1e-6, None, None, 0.0), "weight_decay": _WD},
        ("learning_rate",),
    ),
    Entry("adafactor", "Adafactor (factored second moments; low memory).", {"learning_rate": _LR}, ("learning_rate",)),
])

_WARMUP = integer("Linear warm-up steps from 0 to the peak learning rate.", 0, 0)
SCHEDULES: Registry[Entry] = _declare("schedule", None, _SCHEDULE_BUILDS, [
    Entry("constant", "Constant learning rate after warm-up.", {"warmup_steps": _WARMUP}),
    Entry(
        "linear",
        "Linear decay after warm-up to end_scale x peak at the last step.",
        {"warmup_steps": _WARMUP, "end_scale": number("Final learning rate as a fraction of the peak.", 0.0, 0.0, 1.0)},
    ),
    Entry(
        "cosine",
        "Cosine decay after warm-up to end_scale x peak at the last step.",
        {"warmup_steps": _WARMUP, "end_scale": number("Final learning rate as a fraction of the peak.", 0.0, 0.0, 1.0)},
    ),
    Entry(
        "exponential",
        "Multiply the learning rate by decay_rate every transition_steps after warm-up.",
        {
            "warmup_steps": _WARMUP,
            "decay_rate": number("Factor per transition.", 0.5, None, 1.0, 0.0),
            "transition_steps": integer("Steps per decay.", 1000, 1),
        },
    ),
    Entry(
        "piecewise",
        "Multiply the learning rate by scales[i] from boundaries[i] on (after warm-up).",
        {
            "warmup_steps": _WARMUP,
            "boundaries": int_list("Steps at which the scale changes (increasing).", [], minimum=1),
            "scales": {
                "type": "array",
                "items": {"type": "number", "exclusiveMinimum": 0},
                "maxItems": 64,
                "description": "Scale applied at each boundary (same length as boundaries).",
                "default": [],
            },
        },
    ),
])

# --- datasets and augmentations (data.yaml) --------------------------------------------------
_N_SAMPLES = integer("Examples to generate.", 1000, 10, 10_000_000)
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "SHA-256 of the file (hex)."}
_TASK = enum("What the labels are: class indexes or real values.", ["classification", "regression"], "classification")

# Streaming sources (gitops.learn.streaming): files under a repository folder or URL prefix, pinned by a
# checksum list in the sha256sum format whose own SHA-256 is the pin (the data is never read to plan).
_STREAM_PATH = {
    "path": {"type": "string", "minLength": 1,
             "description": "Folder (or file) relative to the repository root, or a URL prefix (file://, https://, s3://, gs://)."},
    "checksums": {"type": "string", "minLength": 1,
                  "description": "Checksum list in the repository (sha256sum format; `gitops data checksums` writes it)."},
    "checksums_sha256": {**_SHA256, "description": "SHA-256 of the checksum list: the data's pin."},
}
_STREAM_OPTIONS = {
    "workers": integer("Decode worker processes (0: threads in the training process). Not part of the fingerprint.",
                       0, 0, 256),
    "prefetch": integer("Batches read ahead per worker. Not part of the fingerprint.", 2, 1, 1024),
    "stats_sample": integer("Records sampled to fit preprocessing statistics (0: one pass over the whole training split).",
                            0, 0),
}

# Language-modelling text keys: of `text`, and of a `text:` column of parquet/array_record (gitops.learn.text_data).
# No defaults here: filled defaults would change the fingerprints of existing parquet/array_record specs.
_LM_TEXT = {
    "sequence_length": {"type": "integer", "minimum": 2, "maximum": 1_048_576,
                        "description": "Tokens per training sequence (the model's context)."},
    "tokenizer": {
        "type": "object",
        "description": "byte: UTF-8 bytes (no file); file: a `tokenizers` JSON file pinned by SHA-256 "
                       "(`gitops data tokenizer` trains one). Default: byte.",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {"name": enum("Which tokenizer.", ["byte", "file"], "byte"),
                       "path": {"type": "string", "minLength": 1,
                                "description": "The tokenizer JSON, relative to the repository root."},
                       "sha256": _SHA256},
    },
    "encoding_errors": {"type": "string", "enum": ["strict", "replace"],
                        "description": "strict (default): text that is not UTF-8 stops training, naming the file and "
                                       "byte offset; replace: substitute U+FFFD."},
}
_TEXT_COLUMN = {"type": "string", "minLength": 1,
                "description": "Language modelling: the column (parquet) or .npz array (array_record) holding each "
                               "document's text; then sequence_length is required and label/features are not used."}

DATASETS: Registry[Entry] = _declare("dataset", _plugin_entry, _DATASET_BUILDS, [
    Entry("digits", "scikit-learn's bundled 8x8 handwritten digits (1,797 images).", {},
          info={"task": "classification", "input_shape": [8, 8, 1], "num_classes": 10, "examples": 1797,
                "package": "scikit-learn", "kind": "bundled"}),
    Entry("iris", "scikit-learn's bundled iris flowers (150 examples, 4 features).", {},
          info={"task": "classification", "input_shape": [4], "num_classes": 3, "examples": 150,
                "package": "scikit-learn", "kind": "bundled"}),
    Entry("wine", "scikit-learn's bundled wine recognition (178 examples, 13 features).", {},
          info={"task": "classification", "input_shape": [13], "num_classes": 3, "examples": 178,
                "package": "scikit-learn", "kind": "bundled"}),
    Entry("breast_cancer", "scikit-learn's bundled breast cancer (569 examples, 30 features).", {},
          info={"task": "classification", "input_shape": [30], "num_classes": 2, "examples": 569,
                "package": "scikit-learn", "kind": "bundled"}),
    Entry("diabetes", "scikit-learn's bundled diabetes progression regression (442 examples, 10 features).", {},
          info={"task": "regression", "input_shape": [10], "num_outputs": 1, "examples": 442,
                "package": "scikit-learn", "kind": "bundled"}),
    Entry("moons", "Two interleaving half circles (generated).",
          {"n_samples": _N_SAMPLES, "noise": number("Standard deviation of Gaussian noise.", 0.1, 0.0)},
          info={"task": "classification", "input_shape": [2], "num_classes": 2, "kind": "generated",
                "package": "scikit-learn"}),
    Entry("blobs", "Isotropic Gaussian blobs (generated).",
          {"n_samples": _N_SAMPLES, "centers": integer("Number of classes.", 3, 2, 1000),
           "n_features": integer("Features per example.", 2, 1, 100_000),
           "cluster_std": number("Standard deviation of each blob.", 1.0, None, None, 0.0)},
          info={"task": "classification", "kind": "generated", "package": "scikit-learn"}),
    Entry("sequences", "Generated token sequences; the label is a function of the tokens (e.g. majority token).",
          {"n_samples": _N_SAMPLES, "length": integer("Tokens per sequence.", 16, 2, 4096),
           "vocab_size": integer("Distinct tokens.", 8, 2, 65536),
           "rule": enum("Which function of the tokens is the label.", ["majority", "first_last_equal", "sorted"], "majority")},
          info={"task": "classification", "kind": "generated", "inputs": "tokens"}),
    Entry("file", "Arrays from a .npz/.npy file in the repository, pinned by SHA-256.",
          {"path": {"type": "string", "minLength": 1, "description": "Path relative to the repository root."},
           "sha256": _SHA256,
           "x_key": {"type": "string", "description": "Array name of the inputs in the .npz.", "default": "x"},
           "y_key": {"type": "string", "description": "Array name of the labels in the .npz.", "default": "y"},
           "task": _TASK},
          ("path", "sha256"), info={"kind": "file"}),
    Entry("text", "UTF-8 text for language modelling: .txt files (one document each) or .jsonl files (a document "
                  "per line), optionally .gz; one file pinned by sha256, or files/shards under a folder or URL prefix "
                  "pinned by a checksum list. Tokenized once into packed sequences (cached), then streamed.",
          {"path": {"type": "string", "minLength": 1,
                    "description": "A file relative to the repository root (with sha256), or a folder or URL prefix "
                                   "(file://, https://, s3://, gs://) of files listed in checksums."},
           "sha256": _SHA256,
           "checksums": _STREAM_PATH["checksums"],
           "checksums_sha256": _STREAM_PATH["checksums_sha256"],
           "text_field": {"type": "string", "default": "text", "description": "The string field of each .jsonl line."},
           **_LM_TEXT,
           "sequence_length": _LM_TEXT["sequence_length"] | {"default": 128},
           "tokenizer": _LM_TEXT["tokenizer"] | {"default": {"name": "byte"}},
           "encoding_errors": _LM_TEXT["encoding_errors"] | {"default": "strict"},
           **{k: v for k, v in _STREAM_OPTIONS.items() if k != "stats_sample"}},
          ("path",), info={"kind": "file", "task": "language_modeling", "inputs": "tokens"}),
    Entry("url", "Arrays from a remote .npz (https, s3, gs), pinned by SHA-256 and cached by hash.",
          {"url": {"type": "string", "pattern": "^(https?|s3|gs|file)://", "description": "Where to fetch the file."},
           "sha256": _SHA256,
           "x_key": {"type": "string", "description": "Array name of the inputs in the .npz.", "default": "x"},
           "y_key": {"type": "string", "description": "Array name of the labels in the .npz.", "default": "y"},
           "task": _TASK},
          ("url", "sha256"), info={"kind": "url"}),
    Entry("image_folder", "Images (PNG/JPEG) in <path>/<class>/<file> or <path>/<split>/<class>/<file>, "
          "streamed and resized; labels are the sorted folder names.",
          {**_STREAM_PATH,
           "image_size": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 4096},
                          "minItems": 2, "maxItems": 2, "description": "[height, width] every image is resized to."},
           "channels": {"type": "integer", "enum": [1, 3], "default": 3, "description": "1 (grayscale) or 3 (RGB)."},
           "num_classes": integer("Label folders expected (checked when training; sizes the model without reading data).",
                                  None, 2, 1_000_000),
           "skip_bad": boolean("Skip undecodable images (their count goes to manifest.json) instead of failing.", False),
           **_STREAM_OPTIONS},
          ("path", "checksums", "checksums_sha256", "image_size"), info={"kind": "streaming", "inputs": "image"}),
    Entry("parquet", "Rows of Parquet files, read one row group at a time; features and a label column.",
          {**_STREAM_PATH,
           "features": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                        "description": "Feature column names, in model input order."},
           "feature_prefix": {"type": "string", "minLength": 1,
                              "description": "Instead of features: every column whose name starts with this."},
           "label": {"type": "string", "minLength": 1, "description": "The label (target) column."},
           "split_column": {"type": "string", "minLength": 1,
                            "description": "Optional column naming each row's split (train, val, test)."},
           "num_classes": integer("Classes (classification; default: largest label + 1).", None, 2, 1_000_000),
           "task": _TASK, "text": _TEXT_COLUMN, **_LM_TEXT, **_STREAM_OPTIONS},
          ("path", "checksums", "checksums_sha256"), info={"kind": "streaming"}),
    Entry("array_record", "Records of ArrayRecord files (Grain's format), each an .npz with arrays x_key and y_key.",
          {**_STREAM_PATH,
           "x_key": {"type": "string", "description": "Array name of the inputs in each record.", "default": "x"},
           "y_key": {"type": "string", "description": "Array name of the label in each record.", "default": "y"},
           "input_shape": int_list("Shape of one record's inputs (sizes the model without reading data).", [],
                                   min_items=0),
           "num_classes": integer("Classes (classification).", None, 2, 1_000_000),
           "task": _TASK, "text": _TEXT_COLUMN, **_LM_TEXT, **_STREAM_OPTIONS},
          ("path", "checksums", "checksums_sha256"), info={"kind": "streaming"}),
])

AUGMENTATIONS: Registry[Entry] = _declare("augmentation", _plugin_entry, _AUGMENTATION_BUILDS, [
    Entry("shift", "Random translation by up to max_pixels (zero padding).",
          {"max_pixels": integer("Largest shift in each direction.", 1, 1, 64)}),
    Entry("flip", "Random horizontal flip.", {"probability": number("Chance of flipping.", 0.5, 0.0, 1.0)}),
    Entry("noise", "Additive Gaussian noise on the inputs.", {"stddev": number("Noise standard deviation.", 0.1, 0.0)}),
    Entry("crop", "Random crop of size-padding after padding by `padding` pixels.",
          {"padding": integer("Pixels of zero padding before cropping back.", 1, 1, 64)}),
])

# --- metrics -------------------------------------------------------------------------------------
METRICS: Registry[Metric] = _declare("metric", _plugin_metric, {}, [
    Metric("loss", False, ("classification", "regression", "language_modeling"), "The training objective."),
    Metric("accuracy", True, ("classification", "language_modeling"),
           "Fraction of examples whose top class is right (language models: of next tokens)."),
    Metric("perplexity", False, ("language_modeling",), "exp(mean next-token cross-entropy in nats)."),
    Metric("bits_per_byte", False, ("language_modeling",),
           "Next-token cross-entropy in bits per UTF-8 byte of text: comparable across tokenizers."),
    Metric("top3_accuracy", True, ("classification",), "Fraction whose true class is among the 3 highest."),
    Metric("top5_accuracy", True, ("classification",), "Fraction whose true class is among the 5 highest."),
    Metric("mse", False, ("regression",), "Mean squared error."),
    Metric("mae", False, ("regression",), "Mean absolute error."),
])
SPLITS = ("train", "val", "test")
LOSSES: Registry[Entry] = _declare("loss", None, _LOSS_BUILDS, [
    Entry("cross_entropy", "Softmax cross-entropy with integer labels (optional label smoothing)."),
    Entry("mse", "Mean squared error."),
    Entry("mae", "Mean absolute error."),
    Entry("huber", "Huber loss (delta 1.0)."),
])
TASK_LOSSES = {"classification": ["cross_entropy"], "regression": ["mse", "mae", "huber"],
               "language_modeling": ["cross_entropy"]}  # the losses that fit each task
PRECISIONS = ["float32", "bfloat16"]
TEXT_COLUMN_SOURCES = ("parquet", "array_record")  # streaming sources that may hold language-modelling text
# How a run spreads over several devices (gitops.learn.parallel); with one device both are plain training.
PARALLELISM = {
    "data": "Data parallel: the global batch is split over all devices; parameters and optimizer state are "
            "replicated on each.",
    "fsdp": "Data parallel with large parameter and optimizer-state arrays split over the devices too "
            "(fully sharded); for models whose state does not fit one device.",
}


def dataset_task(data: dict) -> str:
    """The task a data config produces (file/url datasets say it themselves; a `text:` column is language modelling)."""
    entry = DATASETS[data["dataset"]["name"]]
    if data["dataset"].get("text") and data["dataset"]["name"] in TEXT_COLUMN_SOURCES:
        return "language_modeling"
    return entry.info.get("task") or data["dataset"].get("task", "classification")
