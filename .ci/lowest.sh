#!/usr/bin/env bash
# The declared lower bounds are true: install every direct dependency at the lowest version
# pyproject.toml allows (uv's --resolution lowest-direct; transitive ones resolve normally) into a
# throwaway venv and run a smoke subset: training, Orbax retention and resume, the plain-Orbax
# restore of the README, device-free checkpoints, releases, pulls and the GitHub backend.
# Called by .ci/run; about 2-3 minutes on a 2-core runner (most of it the install and one training).
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu
PYTHON=${PYTHON:-python3}
venv=$(mktemp -d "${TMPDIR:-/tmp}/gitops-lowest.XXXXXX")
trap 'rm -rf "$venv"' EXIT
start=$(date +%s)
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet 'uv>=0.5'
"$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --resolution lowest-direct -e . 'pytest>=8.0'
echo "lowest versions installed in $(( $(date +%s) - start )) s:"
"$venv/bin/python" - <<'PY'
import importlib.metadata as m
print("  " + ", ".join(f"{p} {m.version(p)}" for p in ("jax", "flax", "optax", "orbax-checkpoint", "numpy", "typer", "PyGithub")))
PY
# trained_examples trains only digits-mlp here (the checkpoint tests need no other model)
GITOPS_TEST_EXAMPLES=digits-mlp "$venv/bin/python" -m pytest -q -p no:cacheprovider -x \
  tests/test_release.py tests/test_github_backend.py \
  "tests/test_checkpoint.py::test_retention_keeps_best_and_last" \
  "tests/test_checkpoint.py::test_handed_on_checkpoint_restores_with_plain_orbax" \
  "tests/test_checkpoint.py::test_checkpoints_carry_no_device_binding" \
  "tests/test_train.py::test_unfinished_run_is_never_deleted"
echo "lowest-versions smoke passed in $(( $(date +%s) - start )) s"
