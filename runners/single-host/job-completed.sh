#!/usr/bin/env bash
# ACTIONS_RUNNER_HOOK_JOB_COMPLETED: runs after every job on this host (as the runner user).
# Wipes everything the job could have left behind (work folders, job venv, home-directory dotfiles)
# and keeps only the caches under GITOPS_CACHE_ROOT: the JAX compilation cache, the run cache and pip's.
set -euo pipefail

# _work/<repo> (the checkout, runs/, report files), _work/_actions, _work/_tool. _work/_temp is still in
# use by the runner while this hook runs; it empties that itself, and register-runner.sh removes all of
# _work again before the next registration.
if [ -n "${RUNNER_WORKSPACE:-}" ] && [ -d "$RUNNER_WORKSPACE" ]; then
  work_root="$(dirname "$RUNNER_WORKSPACE")"
  rm -rf "$RUNNER_WORKSPACE" "$work_root/_actions" "$work_root/_tool"
fi

if [ -n "${GITOPS_JOB_VENV:-}" ] && [ -d "$GITOPS_JOB_VENV" ]; then
  rm -rf "$GITOPS_JOB_VENV"
fi

# Dotfiles a job could plant for the next one (shell rc, git and pip config, ...). The caches live
# outside HOME (under GITOPS_CACHE_ROOT), so all of HOME goes.
if [ -n "${HOME:-}" ] && [ -d "$HOME" ] && [ "$HOME" != "/" ]; then
  find "$HOME" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
fi

echo "job-completed: workspace wiped; caches kept (${JAX_COMPILATION_CACHE_DIR:-?}, ${GITOPS_RUN_CACHE:-?})"
