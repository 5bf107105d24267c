"""Run a released model on inputs from files: `.npy`, `.npz`, `.json`, `.csv` or images in, JSON out.

How each format is read (CSV headers, images) is `gitops.serve.inputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gitops.errors import UsageError
from gitops.serve.inputs import MAX_INPUT_BYTES, read_inputs  # noqa: F401 - predict's input reading, re-exported


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


def predict_file(ref: str, input_path: Path | Sequence[Path], key: str | None = None) -> dict:
    """`gitops predict REF --input FILE [--input FILE ...]`: `{"model": ref, "predictions": [...]}`.

    `ref` is a run folder, a pulled release or a registry reference (loaded by `gitops.api.load`); each
    file is .npy, .npz (`key` picks the array), .json, .csv (a header picks columns by the model's
    feature names) or, for a model trained on an image folder, an image (one example, decoded and
    resized as training did): `gitops.serve.inputs`. The files' examples are predicted together, in
    order; with more than one file each prediction names its file (`"input"`).

    Raises UsageError for an unreadable input file, an image for a model not trained on images, a
    CSV without a feature column, inputs that do not hold examples of the model's input shape, or
    several files for a language model.
    """
    import numpy as np

    from gitops import api
    from gitops.serve import inputs as input_files

    paths = [Path(input_path)] if isinstance(input_path, str | Path) else [Path(p) for p in input_path]
    if not paths:
        raise UsageError("no input file")
    loaded = api.load(ref)
    cfg = loaded.config
    task = getattr(loaded, "task", None) or getattr(cfg, "task", "classification")
    spec = input_files.spec_of(loaded, ref)
    if len(paths) > 1 and spec.input_shape is None:
        raise UsageError("a language model takes one --input file at a time")
    batches = [input_files.as_examples(read_inputs(p, key, spec), spec, p) for p in paths]
    inputs = batches[0] if len(batches) == 1 else np.concatenate(batches)
    result = predictions(loaded, inputs, class_labels(loaded), task)
    if len(paths) > 1:
        names = [str(p) for p, b in zip(paths, batches, strict=True) for _ in range(len(b))]
        result = [{"input": name, **item} for name, item in zip(names, result, strict=True)]
    return {"model": ref, "predictions": result}


def generate_prompts(ref: str, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 1.0,
                     top_k: int | None = None, seed: int = 0) -> dict:
    """`gitops predict MODEL --prompt TEXT`: {"model", "generations": [{"prompt", "text", "tokens"}]}."""
    from gitops import api
    from gitops.learn.generate import Sampling, generate_text

    sampling = Sampling(max_new_tokens, temperature, top_k, seed)
    sampling.check()  # before loading: a wrong flag fails at once
    loaded = api.load(ref)
    return {"model": ref, "generations": generate_text(loaded, prompts, sampling)}
