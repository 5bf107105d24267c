"""Run a released model on inputs from a file: `.npy`, `.npz`, `.json` or `.csv` in, JSON out."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from gitops.errors import UsageError

MAX_INPUT_BYTES = 512 * 1024**2


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} (inputs must be finite)")


def read_inputs(path: Path, key: str | None = None):
    """A float32 batch from a file (one example per row / first axis).

    Raises UsageError for a missing, oversized or unreadable file, and for non-finite values (NaN,
    Infinity, a number too large for float32) in any format: the same rule as the server's 400.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such input file")
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise UsageError(f"{path}: larger than {MAX_INPUT_BYTES} bytes")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if not names:
                    raise UsageError(f"{path}: the .npz holds no arrays")
                if key is not None and key not in names:
                    raise UsageError(f"{path}: no array {key!r} (arrays: {', '.join(names)})")
                array = archive[key or names[0]]
        elif suffix == ".json":
            doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
            if isinstance(doc, dict):
                if "instances" not in doc:
                    raise UsageError(f"{path}: expected a list or {{\"instances\": [...]}}")
                doc = doc["instances"]
            array = np.asarray(doc, dtype=np.float32)
        elif suffix == ".csv":
            rows = []
            with open(path, newline="", encoding="utf-8") as fh:
                for row in csv.reader(fh):
                    if not row:
                        continue
                    try:
                        rows.append([float(x) for x in row])
                    except ValueError:
                        if rows:
                            raise
                        continue  # a header line
            array = np.asarray(rows, dtype=np.float32)
        else:
            raise UsageError(f"{path}: unknown input format {suffix!r}; use .npy, .npz, .json or .csv")
    except (ValueError, OSError) as exc:
        raise UsageError(f"{path}: cannot read inputs: {exc}") from None
    if array.dtype == object:
        raise UsageError(f"{path}: inputs must be numbers")
    if array.dtype.kind in "fiub":
        with np.errstate(over="ignore"):
            array = array.astype(np.float32)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        first = [int(i) for i in np.argwhere(~np.isfinite(array))[0]]
        raise UsageError(f"{path}: non-finite input at index {first} (NaN, Infinity or beyond float32's range; "
                         "inputs must be finite, as the server requires)")
    return array


def _softmax(x):
    import numpy as np

    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def predictions(model: Any, inputs, labels: list[str] | None, task: str) -> list[dict]:
    """Per example: class index, label and probabilities (classification) or values (regression)."""
    import numpy as np

    out = np.asarray(model.predict(inputs))
    if task != "classification":
        return [{"value": row.tolist() if row.ndim else float(row)} for row in out]
    probs = out
    if out.ndim == 2 and (out.min() < 0 or not np.allclose(out.sum(axis=-1), 1.0, atol=1e-3)):
        probs = _softmax(out.astype(np.float64))
    result = []
    for row in probs:
        index = int(np.argmax(row))
        item: dict[str, Any] = {"class": index}
        if labels and index < len(labels):
            item["label"] = labels[index]
        item["probabilities"] = [round(float(p), 6) for p in row]
        result.append(item)
    return result


def class_labels(loaded: Any) -> list[str]:
    """Class names of a loaded model: release.yaml's `labels`, else those the data recorded (image folder names)."""
    cfg = getattr(loaded, "config", None)
    declared = list(getattr(getattr(cfg, "release", None), "labels", ()) or ())
    if declared:
        return declared
    return list(getattr(getattr(loaded, "preprocessing", None), "labels", None) or ())


def predict_file(ref: str, input_path: Path, key: str | None = None) -> dict:
    """`gitops predict REF --input FILE`: `{"model": ref, "predictions": [...]}` for every example of the file.

    `ref` is a run folder, a pulled release or a registry reference (loaded by `gitops.api.load`); the file
    is .npy, .npz (`key` picks the array), .json or .csv. Raises UsageError for an unreadable input file.
    """
    from gitops import api

    loaded = api.load(ref)
    cfg = loaded.config
    inputs = read_inputs(input_path, key)
    task = getattr(loaded, "task", None) or getattr(cfg, "task", "classification")
    labels = class_labels(loaded)
    return {"model": ref, "predictions": predictions(loaded, inputs, labels, task)}


def generate_prompts(ref: str, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 1.0,
                     top_k: int | None = None, seed: int = 0) -> dict:
    """`gitops predict MODEL --prompt TEXT`: {"model", "generations": [{"prompt", "text", "tokens"}]}."""
    from gitops import api
    from gitops.learn.generate import Sampling, generate_text

    sampling = Sampling(max_new_tokens, temperature, top_k, seed)
    sampling.check()  # before loading: a wrong flag fails at once
    loaded = api.load(ref)
    return {"model": ref, "generations": generate_text(loaded, prompts, sampling)}
