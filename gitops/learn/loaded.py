"""A finished run folder (or an unpacked release) back in Python as a `LoadedModel`.

The folder is read by `gitops.registry.runs`; its `config.resolved.yaml` rebuilds the config (its training
fingerprint must match the manifest's), the architecture is built abstractly and the handed-on
checkpoint (`manifest.json["checkpoint_step"]`) restored into it through the plain-Orbax view.
`gitops.api.load` resolves a reference to a folder and calls `load_folder`; `gitops.learn.start_from`
calls it on a pulled parent. jax, flax and orbax load inside `load_folder` only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gitops import config as config_lib
from gitops.errors import GitopsError, IntegrityError
from gitops.registry import runs


@dataclass
class LoadedModel:
    """A trained model: the NNX module (eval mode), its params, config, manifest and metrics."""

    path: Path
    model: Any
    config: Any
    manifest: dict
    metrics: dict
    preprocessing: Any  # gitops.learn.data.Preprocessing
    checkpoint_step: int
    _forward: Any = field(default=None, repr=False)

    @property
    def task(self) -> str:
        """The model's task ("classification", "regression", "language_modeling"), as recorded by its preprocessing: it
        decides how `predict` outputs are read.
        """
        return self.preprocessing.task

    @property
    def params(self) -> dict:
        """Nested dict of the model's parameter arrays (as in the checkpoint's "model" subtree)."""
        from flax import nnx

        return nnx.to_pure_dict(nnx.state(self.model, nnx.Param))

    def predict_fn(self, x: Any) -> Any:
        """The jittable core: preprocessed inputs (batch, *input_shape) -> probabilities or values."""
        return self._forward(x)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw inputs -> class probabilities (classification) or predicted values (regression).

        The saved preprocessing (scaler fitted on the training split, input shape) is applied first,
        so `x` is what the dataset loader yields, e.g. digits as (n, 64) or (n, 8, 8, 1) pixel values 0..16.
        """
        batch = self.preprocessing.apply(np.asarray(x))
        return np.asarray(self._forward(batch))  # one host copy (jax.device_get would walk a pytree first)

    def compiled_predict(self) -> Any:
        """`predict` as one jitted call: raw float32 inputs (batch, *input_shape) -> outputs (NumPy).

        The saved scaling runs inside the same XLA computation as the forward pass (one dispatch, no
        NumPy temporaries), which is what a server calling it once per request wants; each batch
        size compiles once, on its first call. Outputs equal `predict`'s to float32 rounding.
        Language models (token ids) get `predict` itself.
        """
        pre = self.preprocessing
        if pre.task == "language_modeling" or not isinstance(self._forward, functools.partial):
            return self.predict
        import jax

        forward, (leaves,) = self._forward.func, self._forward.args
        shape = tuple(int(d) for d in pre.input_shape)
        features = math.prod(shape)
        scaling = pre.scaling

        @jax.jit
        def run(flat: tuple, x: Any) -> Any:
            rows = x.reshape(x.shape[0], features)
            if scaling is not None:
                rows = (rows - scaling[0]) / scaling[1]
            return forward(flat, rows.reshape(x.shape[0], *shape))

        def call(x: np.ndarray) -> np.ndarray:
            return np.asarray(run(leaves, x))

        return call

    def generate(self, prompt: str | list[str], *, max_new_tokens: int = 64, temperature: float = 1.0,
                 top_k: int | None = None, seed: int = 0) -> str | list[str]:
        """Continue `prompt` (or each of a list of prompts) with a language model's sampled text.

        Temperature 0 is greedy. Each new token costs one cached decoding step (`gitops.learn.generate`).

        Raises:
            UsageError: not a language model, an empty prompt or one longer than the context, or
                `max_new_tokens`/`temperature`/`top_k` out of range.
        """
        from gitops.learn.generate import Sampling, generate_text

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        done = generate_text(self, prompts, Sampling(max_new_tokens, temperature, top_k, seed))
        texts = [d["text"] for d in done]
        return texts[0] if isinstance(prompt, str) else texts


def _match(target: Any, restored: Any, where: str) -> Any:
    """`restored` re-keyed like `target` (int keys from str), checking that every leaf's shape agrees."""
    if isinstance(target, dict):
        if not isinstance(restored, dict):
            raise IntegrityError(f"checkpoint: {where} is not a mapping")
        out = {}
        for key, sub in target.items():
            found = restored.get(key, restored.get(str(key)))
            if found is None:
                raise IntegrityError(f"checkpoint: {where}/{key} is missing")
            out[key] = _match(sub, found, f"{where}/{key}")
        return out
    if tuple(target.shape) != tuple(np.shape(restored)):
        raise IntegrityError(f"checkpoint: {where} has shape {np.shape(restored)}, the model expects {tuple(target.shape)}")
    return restored


def load_folder(folder: Path) -> LoadedModel:
    """The trained model in a finished run folder or an unpacked release.

    Raises:
        GitopsError: the run has not finished, its config is missing, or its manifest names no
            checkpoint step (or that checkpoint is missing).
        IntegrityError: the folder's config does not hash to its manifest's training fingerprint, or
            the checkpoint's arrays do not fit the model.
    """
    folder = Path(folder)
    import jax
    from flax import nnx

    from gitops.learn.architectures import build_model
    from gitops.learn.preprocessing import Preprocessing

    folder_files = runs.RunFolder(folder)
    info = runs.read_run(folder)
    manifest = info.manifest
    if not info.finished:
        raise GitopsError(f"{folder}: the run has not finished (no finished_at in {runs.MANIFEST_FILE}, or no "
                          f"{runs.METRICS_FILE})")
    if not info.config:
        raise GitopsError(f"{folder}: {runs.CONFIG_FILE} is missing or empty")
    cfg = config_lib.build(info.model, info.config)
    if manifest.get("training_fingerprint") and cfg.training_fingerprint != manifest["training_fingerprint"]:
        raise IntegrityError(f"{folder}: {runs.CONFIG_FILE} does not match the manifest's training fingerprint")
    prep = Preprocessing.from_dict(folder_files.preprocessing)
    step = manifest.get("checkpoint_step")
    if step is None:
        raise GitopsError(f"{folder}: the manifest names no checkpoint_step")

    def make() -> Any:
        return build_model(
            cfg.model.architecture,
            config_lib.thaw(cfg.model.params),
            input_shape=prep.input_shape,
            num_outputs=prep.num_outputs,
            rngs=nnx.Rngs(params=0),
            dtype=jax.numpy.bfloat16 if cfg.train.precision == "bfloat16" else None,
        )

    abstract = nnx.eval_shape(make)
    graphdef, abstract_state = nnx.split(abstract)
    target = nnx.to_pure_dict(abstract_state)
    state_dir = (folder_files.checkpoints_dir / str(step) / "state").absolute()
    if not state_dir.is_dir():
        raise GitopsError(f"{folder}: checkpoint {step} is missing ({state_dir})")
    # The plain-Orbax view (no target; list indexes come back as "0", "1", ...), matched to the model's
    # structure, with shapes checked: the same path a user without gitops takes.
    from gitops.learn.checkpoint import restore_anywhere  # also checkpoints published with `cuda:0` in them

    restored = _match(target, restore_anywhere(state_dir)["model"], "model")
    nnx.replace_by_pure_dict(abstract_state, restored)
    model = nnx.merge(graphdef, abstract_state)
    model.eval()
    mgraph, mstate = nnx.split(model)
    classification = prep.task == "classification"

    # The state goes in as a flat tuple of arrays: jax flattens a tuple in C++, while an nnx.State
    # would be flattened by a Python callback on every call (tens of microseconds at batch 1).
    leaves, treedef = jax.tree.flatten(mstate)

    @jax.jit
    def forward(flat: tuple, x: Any) -> Any:
        outputs = nnx.merge(mgraph, jax.tree.unflatten(treedef, list(flat)))(x)
        return jax.nn.softmax(outputs, axis=-1) if classification else outputs

    return LoadedModel(
        path=folder,
        model=model,
        config=cfg,
        manifest=manifest,
        metrics=info.metrics,
        preprocessing=prep,
        checkpoint_step=int(step),
        _forward=functools.partial(forward, tuple(leaves)),
    )
