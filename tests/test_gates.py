"""The one rule for a metric's direction and for comparing two values (gitops.registry.gates): every caller (best
checkpoint, early stopping, sweep ranking, the report, release gates) goes through it, so they agree."""

from __future__ import annotations

import math

import pytest

from gitops.config import catalog, plugins
from gitops.config.plugins import Plugin, PluginError
from gitops.errors import GitopsError
from gitops.registry import gates

NAN, INF = math.nan, math.inf


def test_every_builtin_metric_declares_its_direction_and_names_are_never_guessed() -> None:
    declared = {name: entry.higher_is_better for name, entry in catalog.METRICS.items()}
    assert declared == {"loss": False, "accuracy": True, "perplexity": False, "bits_per_byte": False,
                        "top3_accuracy": True, "top5_accuracy": True, "mse": False, "mae": False}
    for name, higher in declared.items():
        assert gates.direction(f"val/{name}") is higher and gates.higher_is_better(f"test/{name}") is higher
    # a name that looks like a loss is not taken for one: nobody registered it
    assert gates.direction("val/rmse") is None and gates.direction("test/error") is None
    with pytest.raises(GitopsError, match="'val/rmse' is not registered") as raised:
        gates.higher_is_better("val/rmse")
    assert isinstance(raised.value, gates.UnknownMetric)


def test_a_plugin_metric_without_a_direction_is_refused_at_registration_naming_it() -> None:
    spec = Plugin("calibration_gap", "Expected calibration error.", "m:f", tasks=("classification",))
    with pytest.raises(PluginError, match=r"plugin entry point 'x = m:f' .*: metric 'calibration_gap' must "
                                          r"declare higher_is_better"):
        plugins.check("metric", spec, "entry point 'x = m:f' in group gitops.metrics of my-plugin 1.0")
    with pytest.raises(PluginError, match="higher_is_better"):  # "no" is not a direction either
        plugins.check("metric", Plugin("gap", "x", "m:f", higher_is_better="no", tasks=("classification",)), "t")


@pytest.mark.parametrize("new,best,ties,min_delta,expected", [
    (0.5, None, False, 0.0, True),     # the first finite value is the best so far
    (NAN, None, False, 0.0, False),    # a NaN is never better, not even than nothing
    (-INF, None, True, 0.0, False),
    (INF, 0.1, True, 0.0, False),      # nor is an infinite value
    (0.5, 0.5, True, 0.0, True),       # ties=True: the later of two equal values wins (checkpoint selection)
    (0.5, 0.5, False, 0.0, False),     # ties=False: an equal value is no progress (early stopping)
    (0.55, 0.5, False, 0.1, False),    # min_delta: a margin is asked for
    (0.65, 0.5, False, 0.1, True),
])
def test_improves(new, best, ties, min_delta, expected) -> None:
    assert gates.improves(new, best, ties=ties, min_delta=min_delta) is expected


def test_scores_and_ranks_follow_the_direction_and_put_nan_last() -> None:
    assert gates.score(0.2, True) == 0.2 and gates.score(0.2, False) == -0.2
    assert gates.score(NAN, True) == -INF and gates.score(NAN, False) == -INF
    for higher in (True, False):
        values = [0.3, None, NAN, 0.1, 0.2, INF]
        order = sorted(range(len(values)), key=lambda i: (*gates.rank_key(values[i], higher), i))
        finite = [values[i] for i in order[:3]]
        assert finite == ([0.3, 0.2, 0.1] if higher else [0.1, 0.2, 0.3])
        assert order[3:] == [1, 2, 5]  # missing and non-finite after every finite value, in their order


@pytest.mark.parametrize("new,old,higher,verdict", [
    (0.9, 0.8, True, "better"), (0.9, 0.8, False, "worse"), (0.7, 0.8, False, "better"),
    (0.8, 0.8 + 1e-13, True, "equal"),
    (0.9, 0.8, None, "none"),      # a metric nobody registered: values, no verdict
    (NAN, 0.8, False, "worse"), (INF, 0.8, True, "worse"),  # non-finite: never an improvement
    (0.8, NAN, True, "better"), (0.8, None, True, "none"), (None, 0.8, True, "none"),
])
def test_change(new, old, higher, verdict) -> None:
    assert gates.change(new, old, higher) == verdict


def test_max_regression_gates_follow_the_registered_direction() -> None:
    gate = [{"metric": "val/loss", "max_regression": 0.05}, {"metric": "val/accuracy", "max_regression": 0.05}]
    results = gates.evaluate_gates(gate, {"val/loss": 0.34, "val/accuracy": 0.86}, {"val/loss": 0.30, "val/accuracy": 0.90})
    assert [g.status for g in results] == ["pass", "pass"]  # both 0.04 worse
    results = gates.evaluate_gates(gate, {"val/loss": 0.36, "val/accuracy": 0.84}, {"val/loss": 0.30, "val/accuracy": 0.90})
    assert [g.status for g in results] == ["fail", "fail"]  # both 0.06 worse
    assert gates.regression(0.36, 0.30, False) == pytest.approx(0.06)
    results = gates.evaluate_gates([{"metric": "val/loss", "max_regression": 0.0, "max": 1.0}], {"val/loss": NAN},
                                   {"val/loss": 0.3})
    assert [(g.kind, g.status) for g in results] == [("max", "fail"), ("max_regression", "fail")]
    assert gates.failed(results) == results
