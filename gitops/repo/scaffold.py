"""`gitops new`: a model folder that validates at once, written atomically."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from gitops import config
from gitops.errors import ConfigError, UsageError
from gitops.repo.tree import FsTree

HEADER = "# yaml-language-server: $schema=../../schemas/{kind}.schema.json\n"

# Each hint is a whole replacement for the file's settings, so following it validates (a test follows
# every hint in a freshly scaffolded folder). kind -> [(what it is for, the YAML that replaces the file)].
HINTS: dict[str, list[tuple[str, str]]] = {
    "model": [
        ("a convolutional network for the digits images",
         "architecture: cnn\nchannels: [16, 32]\ndense_sizes: [64]\nactivation: relu\n"),
        ("a wider, regularised perceptron",
         "architecture: mlp\nhidden_sizes: [256, 128]\nactivation: gelu\ndropout: 0.1\n"),
    ],
    "train": [
        ("training by epochs instead of steps, with SGD",
         "seed: 0\nbatch_size: 64\nepochs: 20\noptimizer:\n  name: sgd\n  learning_rate: 0.05\n"
         "  momentum: 0.9\ncheckpoint:\n  best_metric: val/accuracy\n"),
    ],
    "data": [
        ("the wine table (13 features, 3 classes)",
         "dataset:\n  name: wine\nsplits:\n  validation: 0.2\n  test: 0.2\n"),
    ],
}

TEMPLATE = {
    "model": """# The architecture and its parameters (`gitops show {name}` prints every default).
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

HINT_INTRO = "# For {what}, replace the settings below with:"


def hint_comment(kind: str) -> str:
    """The hints of one file kind as YAML comments (each a block a user uncomments in place of the settings)."""
    lines = []
    for what, body in HINTS.get(kind, []):
        lines.append(HINT_INTRO.format(what=what))
        lines += [f"#   {line}" for line in body.rstrip("\n").splitlines()]
    return "\n".join(lines) + ("\n" if lines else "")


def read_hints(text: str) -> list[tuple[str, str]]:
    """The (what, YAML) hint blocks written in a scaffolded file's comments (what `hint_comment` wrote)."""
    hints, current = [], None
    for line in text.splitlines():
        if line.startswith("# For ") and line.endswith(", replace the settings below with:"):
            current = [line[len("# For "):-len(", replace the settings below with:")], []]
            hints.append(current)
        elif current is not None and line.startswith("#   "):
            current[1].append(line[4:])
        else:
            current = None
    return [(what, "\n".join(body) + "\n") for what, body in hints]


def new_model(root: Path, name: str, from_model: str | None = None) -> Path:
    """Create `models/<name>/` with commented starter files (or copies of `from_model`'s), written whole.

    Returns the new folder. Raises UsageError for a bad or taken name or an unknown `from_model`, and
    ConfigError when a copied file is a symbolic link or the copy does not validate (nothing is left).
    """
    if not config.MODEL_NAME_RE.fullmatch(name):
        raise UsageError(f"model name {name!r} must match {config.MODEL_NAME_RE.pattern} (lower case, digits, dashes)")
    models = root / config.MODELS_DIR
    target = models / name
    if target.exists():
        raise UsageError(f"{target} already exists")
    models.mkdir(parents=True, exist_ok=True)
    if from_model is not None and not (models / from_model).is_dir():
        raise UsageError(f"no model {from_model!r} to copy from ({models / from_model} is not a folder)"
                         f"{config.did_you_mean(from_model, FsTree(root))}")
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
            body = TEMPLATE[kind].replace("{name}", name)
            intro = body.splitlines(keepends=True)[0] if body.startswith("#") else ""
            text = HEADER.format(kind=kind) + intro + hint_comment(kind) + body[len(intro):]
            (staging / f"{kind}.yaml").write_text(text, encoding="utf-8")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if from_model is None and not (root / "schemas").is_dir():
        # the files' `$schema` headers point at ../../schemas/: a repository not set up by `gitops init`
        from gitops.config.schema_files import write_schemas

        write_schemas(root / "schemas")
    cfg, problems = config.resolve(name, FsTree(root))
    if cfg is None:  # only possible when copying from an invalid model
        shutil.rmtree(target, ignore_errors=True)
        raise ConfigError(problems)
    return target
