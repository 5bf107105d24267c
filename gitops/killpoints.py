"""Named points where a test (or `benchmarks/kill_sweep.py`) makes the process die on purpose.

`GITOPS_TEST_KILL_AT=release.tagged` makes the process send itself SIGKILL when it reaches
`reached("release.tagged")`; `release.tagged:TERM` or `:INT` sends SIGTERM or SIGINT instead (then the
process's own handlers run, as under systemd, Kubernetes or Ctrl-C). Several points may be given,
comma-separated. Unset (always, outside tests) it costs one dictionary look-up.

The points, in the order a command reaches them, are listed in `POINTS`; the kill-point tests and the
sweep iterate over them, so a new point is one line here and one `reached(...)` call.
"""

from __future__ import annotations

import os
import signal

ENV = "GITOPS_TEST_KILL_AT"

POINTS = {
    "release": ("release.started", "release.packaged", "release.staging", "release.staged", "release.tagged",
                "release.published"),
    "artifacts": ("release.uploading",),  # reached only with gitops.yaml's artifacts: (an object store)
    "promote": ("promote.before_tag", "promote.tagged"),
    "pull": ("pull.downloaded", "pull.extracted", "pull.done"),
    "train": ("train.checkpoint_queued", "train.evaluated", "train.metrics_written"),
}

_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}


def reached(point: str) -> None:
    """Die here if `$GITOPS_TEST_KILL_AT` names `point` (a test hook; see the module docstring)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    for item in wanted.split(","):
        name, _, sig = item.strip().partition(":")
        if name == point:
            os.kill(os.getpid(), _SIGNALS.get(sig.upper() or "KILL", signal.SIGKILL))
