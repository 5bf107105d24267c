"""One servable model version: its signature, a jitted predict over padded buckets, and warm-up.

A `ServedVersion` is immutable once warmed; the server switches versions by swapping one reference
to it, so a request that picked a version finishes on that version whatever happens meanwhile.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gitops.errors import GitopsError

VERSION_RE = re.compile(r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")  # fullmatch only


def version_number(version: str) -> int:
    """TF Serving's integer version for a SemVer: v1.2.3 -> 1002003 (0 for an unreleased run).

    MAJOR * 1_000_000 + MINOR * 1_000 + PATCH, so integers order like versions while MINOR and PATCH
    stay below 1000 (a larger part raises: the mapping would collide).
    """
    m = VERSION_RE.fullmatch(version)
    if not m:
        return 0
    major, minor, patch = (int(g) for g in m.groups())
    if minor >= 1000 or patch >= 1000:
        raise GitopsError(f"version {version}: MINOR and PATCH must be below 1000 to map to an integer")
    return major * 1_000_000 + minor * 1_000 + patch


def buckets_for(max_batch_size: int) -> tuple[int, ...]:
    """Padded batch sizes: powers of two up to `max_batch_size`, which is always the last."""
    sizes = []
    b = 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)


def bucket_for(rows: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket holding `rows`; raises ValueError when `rows` exceeds the largest bucket."""
    for b in buckets:
        if rows <= b:
            return b
    raise ValueError(f"{rows} rows exceed the largest bucket {buckets[-1]}")


@dataclass(frozen=True)
class Signature:
    """What a version accepts and returns, per instance (the batch dimension is implicit)."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    task: str  # classification | regression
    output_name: str  # "probabilities" | "predictions"
    input_dtype: str = "float32"
    output_dtype: str = "float32"
    labels: tuple[str, ...] = ()
    # (height, width, channels) of a model trained on an image folder: instances may then be image
    # files' bytes, {"b64": ...} as TF Serving's REST API sends binary data, decoded like training
    image: tuple[int, int, int] | None = None

    @property
    def input_size(self) -> int:
        """Numbers in one instance (the product of `input_shape`): the length a flattened instance may have."""
        return math.prod(self.input_shape)

    def as_dict(self) -> dict:
        """The signature as JSON: shapes with a leading -1 for the batch, dtypes, task and class labels."""
        doc = {
            "inputs": {"name": "inputs", "dtype": self.input_dtype, "shape": [-1, *self.input_shape]},
            "outputs": {"name": self.output_name, "dtype": self.output_dtype, "shape": [-1, *self.output_shape]},
            "task": self.task,
            "labels": list(self.labels),
        }
        if self.image is not None:  # also accepted: {"b64": <image file bytes>}, decoded and resized to this
            height, width, channels = self.image
            doc["image_inputs"] = {"b64": True, "height": height, "width": width, "channels": channels}
        return doc


@dataclass
class ServedVersion:
    """A loaded model version ready to predict fixed-size (bucketed) batches."""

    model: str
    version: str  # "v1.2.3", or "run-<fp12>" for a run folder
    signature: Signature
    predict_fn: Callable[[np.ndarray], np.ndarray]  # (bucket, *input_shape) float32 -> (bucket, *output_shape)
    training_fingerprint: str = ""
    source: str = ""  # the folder it was loaded from
    buckets: tuple[int, ...] = (1,)  # padded batch sizes; the last is the largest batch
    max_wait_s: float = 0.002  # how long a batch waits to fill (release.yaml serving.max_wait_ms)
    warmed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # seconds one predict took per bucket after compiling, measured by `warm` (the batcher runs a
    # lone small request inline on the event loop when this is short: no thread hop)
    predict_seconds: dict[int, float] = field(default_factory=dict)

    @property
    def max_batch_size(self) -> int:
        """The largest padded batch, rows (the last bucket); larger requests are split into chunks."""
        return self.buckets[-1]

    @property
    def number(self) -> int:
        """TF Serving's integer version (`version_number`): 1002003 for v1.2.3, 0 for a run folder."""
        return version_number(self.version)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predict `x` (rows <= largest bucket): pad to the bucket, run, cut the padding off."""
        rows = x.shape[0]
        size = bucket_for(rows, self.buckets)
        if size != rows:
            pad = np.zeros((size - rows, *x.shape[1:]), dtype=x.dtype)
            x = np.concatenate([x, pad])
        y = np.asarray(self.predict_fn(x))
        return y[:rows]

    def warm(self, probe: np.ndarray | None = None) -> None:
        """Compile every bucket and check the outputs: shape, dtype, finite (else GitopsError).

        `probe` (one instance) is what the warm-up feeds; zeros when None. A version that fails here is
        never switched to.
        """
        shape = self.signature.input_shape
        one = np.zeros((1, *shape), np.float32) if probe is None else np.asarray(probe, np.float32).reshape(1, *shape)
        for size in self.buckets:
            batch = np.repeat(one, size, axis=0)
            y = np.asarray(self.predict_fn(batch))
            if y.shape != (size, *self.signature.output_shape):
                raise GitopsError(f"{self.model} {self.version}: warm-up output shape {y.shape}, expected "
                                  f"{(size, *self.signature.output_shape)}")
            if not np.all(np.isfinite(y)):
                raise GitopsError(f"{self.model} {self.version}: warm-up produced non-finite outputs")
            timings = []
            for _ in range(3):  # compiled now: the best of three is what a request will cost
                started = time.perf_counter()
                np.asarray(self.predict_fn(batch))
                timings.append(time.perf_counter() - started)
            self.predict_seconds[size] = min(timings)
        self.warmed = True

    def quick(self, rows: int, limit_s: float) -> bool:
        """True when predicting `rows` rows took at most `limit_s` seconds at warm-up."""
        seconds = self.predict_seconds.get(bucket_for(rows, self.buckets)) if rows <= self.buckets[-1] else None
        return seconds is not None and seconds <= limit_s


# --- from a trained run or a pulled release -------------------------------------------------------


def load_version(model_dir: Path, *, version: str | None = None, max_batch_size: int | None = None,
                 max_wait_ms: float | None = None, loader: Callable[[str], Any] | None = None) -> ServedVersion:
    """Load a run folder (or a pulled release folder) and build its jitted, bucketed predict.

    Args:
        model_dir: the folder `gitops.load` accepts (a run folder or an unpacked release).
        version: the SemVer it was released as; read from the folder's manifest when None, else
            `run-<fp12>`.
        max_batch_size: largest batch; release.yaml's `serving.max_batch_size` when None.
        max_wait_ms: how long a batch waits to fill; release.yaml's `serving.max_wait_ms` when None.
        loader: `gitops.api.load` (a parameter so tests can substitute it).

    Returns:
        The version, not yet warmed.
    """
    if loader is None:
        from gitops.api import load as loader
    loaded = loader(str(model_dir))
    cfg = loaded.config
    if version is None:
        version = _released_as(Path(model_dir)) or f"run-{cfg.training_fingerprint[:12]}"
    if max_batch_size is None:
        max_batch_size = int(cfg.release.serving.get("max_batch_size", 32))
    if max_wait_ms is None:
        max_wait_ms = float(cfg.release.serving.get("max_wait_ms", 2.0))
    signature = _signature(loaded, Path(model_dir))
    return ServedVersion(
        model=cfg.name,
        version=str(version),
        signature=signature,
        predict_fn=_jitted_predict(loaded),
        training_fingerprint=cfg.training_fingerprint,
        source=str(model_dir),
        buckets=buckets_for(max_batch_size),
        max_wait_s=max_wait_ms / 1000.0,
        # language models also answer :generate, which needs the module and its tokenizer
        extra={"loaded": loaded} if signature.task == "language_modeling" else {},
    )


def folder_identity(model_dir: Path) -> tuple[str, str]:
    """(model name, version) of a run folder or a pulled release, read without loading it.

    The version is the SemVer a pulled release records in `release.json`, else `run-<fp12>` for a
    plain run folder (TF Serving's integer for it is 0).
    """
    import json

    model_dir = Path(model_dir)
    try:
        manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise GitopsError(f"{model_dir}: not a run folder or pulled release (no readable manifest.json)",
                          exit_code=2) from None
    model = manifest.get("model") or model_dir.parent.name
    fingerprint = manifest.get("training_fingerprint")
    fingerprint = fingerprint[:12] if isinstance(fingerprint, str) and fingerprint else "unknown"
    version = _released_as(model_dir) or f"run-{fingerprint}"
    return model, version


def _released_as(model_dir: Path) -> str | None:
    """The version a pulled release folder holds (its `release.json`), None for a plain run folder."""
    from gitops.registry.archive import read_release_record

    return (read_release_record(model_dir) or {}).get("version")


def _preprocessing(loaded: Any, model_dir: Path) -> dict:
    pre = getattr(loaded, "preprocessing", None)
    if pre is not None:
        return pre.as_dict() if hasattr(pre, "as_dict") else dict(pre)
    path = model_dir / "preprocessing.json"
    if path.is_file():
        import json

        return json.loads(path.read_text())
    raise GitopsError(f"{model_dir}: no preprocessing.json; cannot tell the model's input signature")


def _signature(loaded: Any, model_dir: Path) -> Signature:
    pre = _preprocessing(loaded, model_dir)
    task = pre.get("task") or loaded.config.task
    input_shape = tuple(int(d) for d in pre["input_shape"])
    n_out = pre.get("num_outputs") or pre.get("num_classes") or 1
    from gitops.serve.predict import class_labels

    labels = tuple(class_labels(loaded))
    from gitops.serve.inputs import spec_of

    spec = spec_of(loaded) if getattr(loaded, "config", None) is not None else None
    image = (*spec.image_size, spec.channels) if spec is not None and spec.image_size else None
    if task == "classification":
        return Signature(input_shape, (int(n_out),), task, "probabilities", labels=labels, image=image)
    if task == "language_modeling":  # :predict gives next-token logits at every position; :generate gives text
        return Signature(input_shape, (input_shape[0], int(n_out)), task, "predictions")
    return Signature(input_shape, (int(n_out),), task, "predictions", image=image)


def _jitted_predict(loaded: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Raw inputs of a fixed batch size -> outputs, through the loaded model's jitted forward.

    `LoadedModel.compiled_predict` runs the saved preprocessing and the forward pass as one jitted
    call (what `LoadedModel.predict` computes, without NumPy steps between); the server only ever
    feeds it bucket-sized batches, so each bucket compiles exactly once, during `ServedVersion.warm`.
    A loader's model without it (tests' stand-ins) is called through its `predict`.
    """
    compiled = getattr(loaded, "compiled_predict", None)
    return compiled() if callable(compiled) else loaded.predict
