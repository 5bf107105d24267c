#!/usr/bin/env bash
# CI step (not part of pytest): build the sdist and wheel with `python -m build`, check the wheel
# carries what `gitops init` copies, install the wheel into a fresh virtual environment, and walk an
# adopter's first steps from an empty folder: init -> validate -> train --dry-run.
# Usage: .ci/wheel.sh [PYTHON]   (default: .venv/bin/python, which has `build` from the test extra)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export JAX_PLATFORMS=cpu

start=$(date +%s)
"$python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
wheel="$(ls "$work"/dist/*.whl)"
sdist="$(ls "$work"/dist/*.tar.gz)"
echo "built $(basename "$sdist") and $(basename "$wheel") in $(( $(date +%s) - start )) s"

# The wheel is built from the sdist, so both must hold the workflow templates init copies.
"$python" - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
wanted = ["gitops/_workflows/workflows/pr.yml", "gitops/_workflows/workflows/release.yml",
          "gitops/_workflows/workflows/pr-train.yml", "gitops/_workflows/actions/setup-gitops/action.yml",
          "gitops/_workflows/actionlint.yaml", "gitops/config/schema.py", "gitops/config/catalog.py"]
missing = [n for n in wanted if n not in names]
if missing:
    sys.exit(f"the wheel lacks: {', '.join(missing)}")
print(f"wheel holds the workflow templates and the schema sources ({len(names)} files)")
PY

start=$(date +%s)
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel"
echo "installed the wheel into a fresh venv in $(( $(date +%s) - start )) s"

gitops="$work/venv/bin/gitops"
mkdir "$work/adopter"
cd "$work/adopter"
git config --global user.name >/dev/null 2>&1 || git config --global user.name "gitops ci"
git config --global user.email >/dev/null 2>&1 || git config --global user.email "ci@example.invalid"
start=$(date +%s)
"$gitops" --version
"$gitops" init --example
"$gitops" schemas --check
"$gitops" validate
"$gitops" train my-model --dry-run
grep -q 'gitops-nn==' .github/workflows/pr.yml   # the workflows pin the version that wrote them
git add -A && git commit -qm "gitops init" && "$gitops" ls
test -z "$(git status --porcelain)"
echo "adopter path (init, validate, dry run) passed in $(( $(date +%s) - start )) s"
