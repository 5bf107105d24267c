"""`gitops new`: a model folder that validates at once, written atomically."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from gitops import config
from gitops.errors import ConfigError, UsageError
from gitops.tree import FsTree

HEADER = "# yaml-language-server: $schema=../../schemas/{kind}.schema.json\n"

TEMPLATE = {
    "model": """# The architecture and its parameters. Try `architecture: cnn` for images.
architecture: mlp
hidden_sizes: [128]
activation: relu
""",
    "train": """seed: 0
batch_size: 64
steps: 1000
optimizer:
  name: adamw
  learning_rate: 1e-3
schedule:
  name: cosine
  warmup_steps: 50
checkpoint:
  best_metric: val/accuracy
""",
    "data": """dataset:
  name: digits
splits:
  validation: 0.15
  test: 0.15
""",
    "release": """description: "{name}: describe what this model is for."
owners: []
gates:
  - metric: test/accuracy
    min: 0.9
""",
}


def new_model(root: Path, name: str, from_model: str | None = None) -> Path:
    if not config.MODEL_NAME_RE.fullmatch(name):
        raise UsageError(f"model name {name!r} must match {config.MODEL_NAME_RE.pattern} (lower case, digits, dashes)")
    models = root / config.MODELS_DIR
    target = models / name
    if target.exists():
        raise UsageError(f"{target} already exists")
    models.mkdir(parents=True, exist_ok=True)
    if from_model is not None and not (models / from_model).is_dir():
        raise UsageError(f"no model {from_model!r} to copy from ({models / from_model} is not a folder)")
    if from_model is not None:  # never copy what a link points at (it may be outside the repository)
        tree = FsTree(root)
        for kind in config.FILE_KINDS:
            refused = tree.refused(f"{config.MODELS_DIR}/{from_model}/{kind}.yaml")
            if refused is not None:
                raise ConfigError([refused])
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models))
    try:
        for kind in config.FILE_KINDS:
            if from_model is not None:
                source = models / from_model / f"{kind}.yaml"
                if source.is_file():
                    shutil.copyfile(source, staging / f"{kind}.yaml")
                continue
            text = HEADER.format(kind=kind) + TEMPLATE[kind].replace("{name}", name)
            (staging / f"{kind}.yaml").write_text(text, encoding="utf-8")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if from_model is None and not (root / "schemas").is_dir():
        # the files' `$schema` headers point at ../../schemas/: a repository not set up by `gitops init`
        from gitops.schema import write_schemas

        write_schemas(root / "schemas")
    cfg, problems = config.resolve(name, FsTree(root))
    if cfg is None:  # only possible when copying from an invalid model
        shutil.rmtree(target, ignore_errors=True)
        raise ConfigError(problems)
    return target
