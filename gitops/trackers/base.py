"""What every tracker sink shares: the run read as data, the outcome record, retries with back-off.

A sink (`tensorboard`, `mlflow`) receives a finished run folder, read once into `RunData`, and returns
an `Outcome` that `gitops.trackers` writes into the run's manifest. Sinks never see the training loop:
the run folder is the source of truth and a tracker is fed from it afterwards, so a tracker that is
down can never stop, slow or change a run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from gitops import jsonio
from gitops.errors import GitopsError

T = TypeVar("T")

HISTORY_KEYS = ("step", "epoch", "split", "time")  # a history record's bookkeeping, not metric values
SMALL_FILE_BYTES = 10 * 1024 * 1024  # run-folder files sent as artifacts (checkpoints never are)
ARTIFACT_FILES = ("config.resolved.yaml", "manifest.json", "metrics.json", "history.jsonl", "preprocessing.json",
                  "metrics_spread.json")


class TrackerUnavailable(GitopsError):
    """The sink cannot be used at all here (no tracking URI): skipped at once, no retries."""


@dataclass
class Outcome:
    """What happened to one run in one sink; stored in manifest.json under `trackers.<sink>`.

    status: "logged" (sent now), "matched" (already there, found by training fingerprint),
    "skipped" (the sink failed after its retries or is not configured here; `warning` says why).
    """

    status: str
    attempts: int = 0
    url: str | None = None
    warning: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the run is in the sink ("logged" now or "matched" from an earlier send)."""
        return self.status in ("logged", "matched")

    def record(self) -> dict[str, Any]:
        """The manifest entry for this outcome: status, `at` (UTC ISO 8601, now), attempts, and url, warning
        and details when set.
        """
        out: dict[str, Any] = {"status": self.status, "at": now_iso(), "attempts": self.attempts}
        if self.url:
            out["url"] = self.url
        if self.warning:
            out["warning"] = self.warning
        out.update(self.details)
        return out


@dataclass
class RunData:
    """A finished run folder read as plain data (no jax)."""

    path: Path
    model: str
    manifest: dict
    config: dict
    metrics: dict
    history: list[dict]

    @property
    def training_fingerprint(self) -> str:
        """The run's training fingerprint (64 hex digits of SHA-256) from its manifest; "" when it has none."""
        return self.manifest.get("training_fingerprint", "")

    @property
    def short_fingerprint(self) -> str:
        """The first 12 hex digits of the training fingerprint, as run folders and logs name a run."""
        return self.training_fingerprint[:12]

    def scalars(self) -> Iterator[tuple[str, int, float, float]]:
        """(name, step, value, wall-clock seconds since the epoch) of every finite logged value.

        Names are `<split>/<metric>` (`train/loss`, `val/accuracy`, `train/learning_rate`), as in the report.
        """
        start = iso_seconds(self.manifest.get("started_at")) or 0.0
        for record in self.history:
            split, step = record.get("split", "train"), int(record.get("step", 0))
            when = start + float(record.get("time") or 0.0)
            for key, value in record.items():
                if key in HISTORY_KEYS or isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                if math.isfinite(value):
                    yield f"{split}/{key}", step, float(value), when

    def final_metrics(self) -> dict[str, float]:
        """metrics.json's finite values (`test/accuracy`, ...)."""
        return {k: float(v) for k, v in self.metrics.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}

    def small_files(self) -> list[Path]:
        """The run folder's `ARTIFACT_FILES` that exist and weigh at most `SMALL_FILE_BYTES` (10 MiB): what a sink
        uploads as artifacts (checkpoints never).
        """
        return [self.path / name for name in ARTIFACT_FILES
                if (self.path / name).is_file() and (self.path / name).stat().st_size <= SMALL_FILE_BYTES]


def read_run_data(path: Path) -> RunData:
    """Read a run folder for the sinks; GitopsError when it is not a finished run."""
    from gitops.registry import runs

    info = runs.read_run(Path(path))
    if not info.finished:
        raise GitopsError(f"{path}: the run has not finished; trackers only receive finished runs")
    return RunData(Path(path), info.model, info.manifest, info.config, info.metrics, info.history)


class Sink(Protocol):
    """A tracker. `log_run` is idempotent: a run already there (same training fingerprint) is matched."""

    name: str

    def log_run(self, run: RunData, context: Mapping[str, str]) -> Outcome:
        """Send `run` (`context`: extra tags such as `pr`) and say what happened; a run already there is matched."""


# --- helpers shared by the sinks ----------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as `{"train.optimizer.learning_rate": 0.001, ...}`; lists stay whole values."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        if not value and prefix:
            out[prefix[:-1]] = "{}"
        return out
    return {prefix[:-1]: value} if prefix else {}


def scalar_text(value: Any) -> str:
    """A config value as the text trackers show: numbers and strings as is, the rest as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool) or isinstance(value, list | dict):
        return jsonio.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def strip_credentials(uri: str) -> str:
    """A URI without `user:password@` (what we store and print; tokens never leave the environment)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return uri


def now_iso() -> str:
    """The current UTC time as ISO 8601 to the second with a `Z` suffix, e.g. `2026-01-31T12:00:00Z`."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def iso_seconds(text: Any) -> float | None:
    """Seconds since the Unix epoch of an ISO 8601 time (a `Z` suffix accepted); None for a non-string or
    unparsable value.
    """
    if not isinstance(text, str):
        return None
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def pr_number() -> str | None:
    """The pull request this job runs for: `$GITOPS_PR`, else the GitHub event's PR number."""
    value = os.environ.get("GITOPS_PR", "").strip()
    if value.isdigit():
        return value
    from gitops.repo import ci_event

    number = ci_event.pr_number()
    return str(number) if number else None


def with_retries(call: Callable[[], T], *, attempts: int, backoff_s: float,
                 sleep: Callable[[float], None] = time.sleep) -> tuple[T | None, int, BaseException | None]:
    """Call `call` up to `attempts` times, waiting `backoff_s`, then twice that, ... between tries.

    Returns (result, attempts made, last error); the error is None on success. `TrackerUnavailable`
    is not retried (nothing will change by waiting). KeyboardInterrupt and SystemExit pass through.
    """
    delay, error = backoff_s, None
    for attempt in range(1, attempts + 1):
        try:
            return call(), attempt, None
        except TrackerUnavailable as exc:
            return None, attempt, exc
        except Exception as exc:  # noqa: BLE001 - any failure of an outside service: retried, then reported
            error = exc
        if attempt < attempts:
            sleep(delay)
            delay *= 2
    return None, attempts, error


def describe(error: BaseException) -> str:
    """One line naming an error, without credentials (MLflow errors can quote the URL)."""
    text = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error).strip() else ''}".rstrip(": ")
    text = re.sub(r"://[^/@\s]+@", "://", text)  # user:password@ in a quoted URL
    for var in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD"):
        secret = os.environ.get(var)
        if secret:
            text = text.replace(secret, "***")
    return text[:300]


def model_summary(run: RunData) -> str:
    """The model as Markdown text: architecture, parameter count, and each parameter's shape.

    Shapes come from abstract evaluation of the run's resolved config (`nnx.eval_shape`: no FLOPs, no
    memory), the same factory training used; without flax the table is left out.
    """
    model_cfg = dict((run.config or {}).get("model") or {})
    architecture = model_cfg.pop("architecture", "unknown")
    prep = {}
    with contextlib.suppress(Exception):  # a summary is best effort, never an error
        prep = jsonio.loads((run.path / "preprocessing.json").read_text(encoding="utf-8"))
    lines = [f"**{run.model}**: `{architecture}`, {run.manifest.get('param_count', 'unknown')} parameters",
             "", f"input shape {prep.get('input_shape', 'unknown')}, {prep.get('num_outputs', 'unknown')} outputs",
             "", "| parameter | shape |", "| --- | --- |"]
    rows = []
    with contextlib.suppress(Exception):  # a summary is best effort, never an error
        rows = _param_shapes(architecture, model_cfg, prep)
    if not rows:
        return "\n".join(lines[:3] + ["", "```json", jsonio.dumps(model_cfg, indent=1, sort_keys=True), "```"])
    lines += [f"| `{name}` | {tuple(shape)} |" for name, shape in rows]
    return "\n".join(lines)


def _param_shapes(architecture: str, params: Mapping, prep: Mapping) -> list[tuple[str, tuple]]:
    import jax
    from flax import nnx

    from gitops.learn.architectures import build_model

    params = {k: v for k, v in params.items() if k != "architecture"}
    abstract = nnx.eval_shape(lambda: build_model(architecture, params, input_shape=prep["input_shape"],
                                                  num_outputs=int(prep["num_outputs"]), rngs=nnx.Rngs(0)))
    leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.state(abstract, nnx.Param))
    def name(path: tuple) -> str:  # ('hidden', 0, 'kernel', .value) -> "hidden/0/kernel"
        parts = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
        return "/".join(str(p) for p in parts if p != "value")

    return [(name(path), tuple(getattr(leaf, "shape", ()))) for path, leaf in leaves]

