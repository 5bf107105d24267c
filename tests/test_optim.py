"""Optimizer and schedule builders: the learning rate at chosen steps, every catalog name implemented."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gitops.config import catalog
from gitops.learn import optim


def lr_at(schedule: dict, steps: list[int], peak: float = 1.0, total: int = 110) -> list[float]:
    fn = optim.build_schedule(schedule, peak, total)
    return [float(fn(s)) for s in steps]


def test_every_catalog_optimizer_and_schedule_is_registered() -> None:
    assert set(catalog.OPTIMIZERS.names()) == set(catalog.OPTIMIZERS)
    assert set(catalog.SCHEDULES.names()) == set(catalog.SCHEDULES)


def test_warmup_then_cosine() -> None:
    got = lr_at({"name": "cosine", "warmup_steps": 10, "end_scale": 0.1}, [0, 5, 10, 60, 110])
    np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)


def test_linear_constant_exponential_piecewise() -> None:
    np.testing.assert_allclose(lr_at({"name": "linear", "warmup_steps": 0, "end_scale": 0.0}, [0, 55, 110]), [1, 0.5, 0], atol=1e-6)
    np.testing.assert_allclose(lr_at({"name": "constant", "warmup_steps": 4}, [0, 2, 4, 100]), [0, 0.5, 1, 1], atol=1e-6)
    exp = {"name": "exponential", "warmup_steps": 10, "decay_rate": 0.5, "transition_steps": 20}
    np.testing.assert_allclose(lr_at(exp, [10, 29, 30, 50]), [1, 1, 0.5, 0.25], atol=1e-6)
    piece = {"name": "piecewise", "warmup_steps": 5, "boundaries": [50, 80], "scales": [0.1, 0.5]}
    np.testing.assert_allclose(lr_at(piece, [5, 49, 50, 79, 80]), [1, 1, 0.1, 0.1, 0.05], atol=1e-6)


def _train_cfg(**overrides) -> dict:
    cfg = {
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "schedule": {"name": "constant", "warmup_steps": 0},
        "grad_clip_norm": None,
        "gradient_accumulation": 1,
    }
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize("name", sorted(catalog.OPTIMIZERS))
def test_each_optimizer_takes_a_step_downhill(name: str) -> None:
    lr = {"lion": 0.01, "adafactor": 0.05}.get(name, 0.05)
    tx = optim.build_optimizer(_train_cfg(optimizer={"name": name, "learning_rate": lr}), 100)
    params = {"w": jnp.full((4, 4), 2.0)}
    state = tx.init(params)
    loss = lambda p: jnp.sum(p["w"] ** 2)  # noqa: E731
    start = float(loss(params))
    for _ in range(3):
        updates, state = tx.update({"w": 2 * params["w"]}, state, params)
        params = optax.apply_updates(params, updates)
    assert float(loss(params)) < start


def test_sgd_weight_decay_momentum_and_clip() -> None:
    tx = optim.build_optimizer(_train_cfg(optimizer={"name": "sgd", "learning_rate": 1.0}, grad_clip_norm=1.0), 10)
    params = {"w": jnp.zeros(4)}
    updates, _ = tx.update({"w": jnp.full(4, 10.0)}, tx.init(params), params)
    np.testing.assert_allclose(float(optax.tree.norm(updates)), 1.0, rtol=1e-6)  # clipped to norm 1, lr 1
    tx = optim.build_optimizer(_train_cfg(optimizer={"name": "sgd", "learning_rate": 0.5, "weight_decay": 0.1}), 10)
    params = {"w": jnp.ones(2)}
    updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.05 * np.ones(2), rtol=1e-6)


def test_gradient_accumulation_applies_every_k_with_the_mean() -> None:
    tx = optim.build_optimizer(_train_cfg(optimizer={"name": "sgd", "learning_rate": 1.0}, gradient_accumulation=2), 10)
    params = {"w": jnp.zeros(1)}
    state = tx.init(params)
    u1, state = tx.update({"w": jnp.array([1.0])}, state, params)
    assert float(u1["w"][0]) == 0.0
    u2, state = tx.update({"w": jnp.array([3.0])}, state, params)
    assert float(u2["w"][0]) == pytest.approx(-2.0)


def test_schedule_of_a_resolved_config() -> None:
    from conftest import REPO

    from gitops import config

    cfg = config.load("digits-mlp", REPO)
    fn = optim.learning_rate_schedule(cfg.train, 1500)
    assert float(fn(100)) == pytest.approx(3e-3)
    assert float(fn(1500)) == pytest.approx(0.0, abs=1e-9)
