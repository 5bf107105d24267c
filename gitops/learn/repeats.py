"""`train.repeats: N`: N seeds (seed, seed+1, ...) trained one after another into ONE run folder.

Layout (the top level stays what DESIGN.md's "Run folder" promises, so report, release, load and serve
read a repeated run like any other)::

    runs/<model>/<fingerprint[:12]>/
      config.resolved.yaml    the config as given (train.repeats: N)
      manifest.json           the representative seed's manifest, with this config's fingerprints, the
                              base seed, total wall time, and a "repeats" section: n, seeds, folders,
                              representative {index, seed, by, rule}
      metrics.json            the MEAN over seeds of every metric (what gates and reports compare)
      metrics_spread.json     per metric: values (seed order), mean, std (sample, ddof 1), min, max, n
      history.jsonl           the representative seed's history
      preprocessing.json
      checkpoints/            the representative seed's checkpoints (hard links where the disk allows)
      repeats/<i>/            seed `seed + i`: a complete single-seed run folder; its config is this
                              one with train.seed = seed + i and train.repeats = 1, so its manifest's
                              fingerprint is exactly that of `gitops train MODEL --set train.seed=...`

The representative is the seed whose headline metric (release.yaml's `headline_metric`, else
test/accuracy or test/loss) is closest to the mean over seeds: the checkpoint a release hands on then
behaves like the numbers the report shows. The top-level manifest gets `finished_at` last, after every
seed, so a crash or Ctrl-C anywhere leaves an unfinished run; `--resume` skips finished seeds, resumes
the seed that was interrupted from its last checkpoint, and starts the rest.

Seeds run sequentially (not `jax.vmap`-ed): each seed is exactly the single-seed run, bit for bit,
and memory stays that of one run.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gitops import config as config_lib
from gitops.config.yamlio import dump_yaml
from gitops.errors import RunInterrupted, TrainingError
from gitops.learn import train as train_lib
from gitops.registry import stats
from gitops.registry.runs import PREPROCESSING_FILE, RunFolder, replace_dir, write_json

REPEATS_DIR = "repeats"
SPREAD_FILE = "metrics_spread.json"
RULE = "closest to the mean"


def seed_config(cfg: config_lib.ResolvedConfig, index: int) -> config_lib.ResolvedConfig:
    """The single-seed config of repeat `index`: train.seed + index, train.repeats = 1."""
    doc = cfg.as_dict()
    doc["train"]["seed"] = int(cfg.train.seed) + index
    doc["train"]["repeats"] = 1
    return config_lib.build(cfg.name, doc, config_lib.thaw(cfg.files))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _has_checkpoints(run: RunFolder) -> bool:
    return run.checkpoints_dir.is_dir() and any(run.checkpoints_dir.iterdir())


def train_repeats(
    cfg: config_lib.ResolvedConfig,
    workdir: Path,
    *,
    root: Path | None = None,
    resume: bool = False,
    reporter: Any = None,
    dataset: Any = None,
) -> dict[str, float]:
    """Train every seed of `cfg` into `workdir` (the layout above); returns the mean metrics.

    Args:
        cfg: a ResolvedConfig with train.repeats > 1.
        workdir: the run folder.
        root: repository root (data files, git commit).
        resume: skip finished seeds, resume the interrupted one, start the rest.
        reporter: progress sink (notes which seed runs).
        dataset: an already loaded dataset (loaded once here otherwise and shared by all seeds).

    Raises:
        TrainingError: a seed diverged (the message names it).
        RunInterrupted: Ctrl-C; the interrupted seed has a checkpoint of its step.
    """
    from gitops.learn import data as data_lib

    reporter = reporter or train_lib.SilentReporter()
    root = Path(root) if root else config_lib.find_root()
    run = RunFolder(workdir)
    n = int(cfg.train.repeats)
    seeds = [int(cfg.train.seed) + i for i in range(n)]
    subdir = run.path / REPEATS_DIR
    if subdir.exists() and any(subdir.iterdir()) and not resume:
        raise TrainingError(f"{subdir} already holds seeds; resume or remove the run folder")
    from gitops.learn import start_from

    dataset = dataset or data_lib.load(cfg.data, root)  # a data pin or a parent that doesn't fit: no run folder
    start_from.prepare(cfg, root, dataset.preprocessing)
    run.path.mkdir(parents=True, exist_ok=True)
    started_at = _now()
    if resume and run.manifest_path.is_file():
        started_at = run.manifest.get("started_at") or started_at
    section = {"n": n, "seeds": seeds, "folders": [f"{REPEATS_DIR}/{i}" for i in range(n)], "representative": None}
    run.config_path.write_text(dump_yaml(cfg.as_dict()), encoding="utf-8")
    run.write_manifest({
        "model": cfg.name, "task": cfg.task, "training_fingerprint": cfg.training_fingerprint,
        "release_fingerprint": cfg.release_fingerprint, "data_fingerprint": cfg.data_fingerprint,
        "seed": cfg.train.seed, "started_at": started_at, "finished_at": None, "repeats": section,
    })

    per_seed: list[dict[str, float]] = []
    subs: list[RunFolder] = []
    for i, seed in enumerate(seeds):
        sub = RunFolder(subdir / str(i))
        scfg = seed_config(cfg, i)
        subs.append(sub)
        where = f" of seed {seed} ({i + 1} of {n})"
        if sub.is_finished and sub.manifest.get("training_fingerprint") == scfg.training_fingerprint:
            reporter.note(f"seed {seed} ({i + 1} of {n}) already finished; skipped")
            per_seed.append(sub.metrics)
            continue
        again = resume and _has_checkpoints(sub)
        if sub.path.exists() and not again:
            shutil.rmtree(sub.path)
        reporter.note(f"seed {seed} ({i + 1} of {n})" + (": resuming" if again else ""))
        try:
            per_seed.append(train_lib.train_and_evaluate(scfg, sub.path, root=root, resume=again,
                                                         reporter=reporter, dataset=dataset))
        except RunInterrupted as exc:
            raise exc.replace(where=where) from None
        except TrainingError as exc:
            raise TrainingError(f"seed {seed} ({i + 1} of {n}): {exc.message}") from None

    spread = stats.summarize_runs(per_seed)
    head = cfg.headline_metric()
    index = stats.closest_to_mean(per_seed, head)
    chosen = subs[index]
    section["representative"] = {"index": index, "seed": seeds[index], "by": head, "rule": RULE,
                                 "metrics": per_seed[index]}
    _assemble(run, chosen)
    write_json(run.path / SPREAD_FILE, {"n": n, "seeds": seeds, "std": "sample (ddof 1)",
                                        "representative": section["representative"], "metrics": spread})
    mean = stats.means(spread)
    run.write_metrics(mean)
    manifest = dict(chosen.manifest)
    manifest.update(
        training_fingerprint=cfg.training_fingerprint,
        release_fingerprint=cfg.release_fingerprint,
        data_fingerprint=cfg.data_fingerprint,
        seed=cfg.train.seed,
        started_at=started_at,
        wall_time_s=round(sum(float(s.manifest.get("wall_time_s") or 0.0) for s in subs), 3),
        repeats=section,
        finished_at=_now(),  # last: the run counts as finished only now
    )
    run.write_manifest(manifest)
    return mean


def _assemble(run: RunFolder, chosen: RunFolder) -> None:
    """Top-level checkpoints/, history.jsonl and preprocessing.json from the representative seed."""
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoints.", suffix=".tmp", dir=run.path))
    try:
        target = tmp / "checkpoints"
        shutil.copytree(chosen.checkpoints_dir, target, copy_function=_link_or_copy)
        if run.checkpoints_dir.exists():
            replace_dir(target, run.checkpoints_dir)
        else:
            os.replace(target, run.checkpoints_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.copyfile(chosen.history_path, run.history_path)
    shutil.copyfile(chosen.path / PREPROCESSING_FILE, run.path / PREPROCESSING_FILE)
