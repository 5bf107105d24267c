"""From `train.optimizer` / `train.schedule` to one `optax.GradientTransformation`.

The chain is: clip by global norm (when `grad_clip_norm` is set) -> the named optimizer driven by a
learning-rate schedule (linear warm-up joined to the named decay with `optax.join_schedules`) ->
`optax.MultiSteps` when `gradient_accumulation` > 1, so one optimizer step averages that many
micro-batches. Every optimizer and schedule name resolves through a registry; optax itself is never
our config surface.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

from gitops.config import catalog

# --- schedules: each returns the decay part, starting at step 0 after warm-up --------------------


def _constant(peak: float, decay_steps: int, **_: Any) -> optax.Schedule:
    return optax.constant_schedule(peak)


def _linear(peak: float, decay_steps: int, end_scale: float = 0.0, **_: Any) -> optax.Schedule:
    return optax.linear_schedule(peak, peak * end_scale, max(1, decay_steps))


def _cosine(peak: float, decay_steps: int, end_scale: float = 0.0, **_: Any) -> optax.Schedule:
    return optax.cosine_decay_schedule(peak, max(1, decay_steps), alpha=end_scale)


def _exponential(peak: float, decay_steps: int, decay_rate: float = 0.5, transition_steps: int = 1000, **_: Any) -> optax.Schedule:
    return optax.exponential_decay(peak, transition_steps, decay_rate, staircase=True)


def _piecewise(peak: float, decay_steps: int, boundaries=(), scales=(), warmup: int = 0, **_: Any) -> optax.Schedule:
    # Boundaries are absolute optimizer steps (what a user reads off a curve); the decay part starts
    # counting after warm-up, hence the shift. Scales multiply in turn, as optax's piecewise schedule does.
    shifted = {max(0, int(b) - warmup): float(s) for b, s in zip(boundaries, scales, strict=True)}
    return optax.piecewise_constant_schedule(peak, shifted)


def build_schedule(schedule: Mapping[str, Any], peak: float, total_steps: int) -> optax.Schedule:
    """Warm-up from 0 to `peak` over `warmup_steps`, then the named schedule.

    Decays (linear, cosine) span the steps after warm-up and end at the last step; exponential
    transitions count from the end of warm-up; piecewise boundaries are absolute steps.
    """
    params = {k: v for k, v in schedule.items() if k != "name"}
    warmup = int(params.pop("warmup_steps", 0) or 0)
    decay = catalog.SCHEDULES.get(schedule["name"])(peak, max(1, total_steps - warmup), warmup=warmup, **params)
    if warmup <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


# --- optimizers ------------------------------------------------------------------------------------


def _sgd(lr: optax.Schedule, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0, **_: Any):
    parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    parts.append(optax.sgd(lr, momentum=momentum or None, nesterov=nesterov))
    return optax.chain(*parts)


def _adam(lr: optax.Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, **_: Any):
    return optax.adam(lr, b1=b1, b2=b2, eps=eps)


def _adamw(lr: optax.Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-4, **_: Any):
    return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def _lion(lr: optax.Schedule, b1: float = 0.9, b2: float = 0.99, weight_decay: float = 0.0, **_: Any):
    return optax.lion(lr, b1=b1, b2=b2, weight_decay=weight_decay)


def _lamb(lr: optax.Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, weight_decay: float = 0.0, **_: Any):
    return optax.lamb(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def _adafactor(lr: optax.Schedule, **_: Any):
    return optax.adafactor(lr)


def build_optimizer(train: Any, total_steps: int) -> optax.GradientTransformation:
    """The full gradient transformation for a `TrainConfig` (or its dict) and the run's optimizer steps.

    Args:
        train: `cfg.train` (a TrainConfig) or the `train` mapping of a resolved config.
        total_steps: optimizer steps of the whole run (schedules decay over them).

    Returns:
        An optax transformation; with gradient accumulation it is an `optax.MultiSteps`, which applies
        the update every `gradient_accumulation` calls and counts schedule steps in optimizer steps.
    """
    get = train.get if isinstance(train, Mapping) else lambda key, default=None: getattr(train, key, default)
    opt = dict(get("optimizer"))
    name = opt.pop("name")
    peak = float(opt.pop("learning_rate"))
    schedule = build_schedule(get("schedule") or {"name": "constant"}, peak, int(total_steps))
    tx = catalog.OPTIMIZERS.get(name)(schedule, **opt)
    clip = get("grad_clip_norm")
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
    accumulate = int(get("gradient_accumulation", 1) or 1)
    if accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate)
    return tx


def learning_rate_schedule(train: Any, total_steps: int) -> optax.Schedule:
    """The schedule alone (for logging and tests): learning rate at each optimizer step."""
    get = train.get if isinstance(train, Mapping) else lambda key, default=None: getattr(train, key, default)
    return build_schedule(get("schedule") or {"name": "constant"}, float(get("optimizer")["learning_rate"]), int(total_steps))
