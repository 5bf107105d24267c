#!/usr/bin/env bash
# Register and run ONE ephemeral GitHub Actions runner (labels self-hosted,linux,gpu) for gitops.
# Each runner takes a single job and then unregisters itself; gitops-runner.service starts the next.
#
#   register-runner.sh fetch-token   as root (ExecStartPre=+): trade the admin credential, readable only
#                                    by root, for a short-lived registration token the runner user may read
#   register-runner.sh run           as the runner user (ExecStart): fresh job venv, register, run one job
#
# Configuration (environment, see runner.env.example):
#   GITHUB_URL          https://github.com/OWNER/REPO (or https://github.com/ORG for an org runner)
#   RUNNER_TOKEN        a registration token; if unset, one is read from $RUNNER_TOKEN_FILE (and the file
#                       deleted), else obtained with `gh api` using GH_TOKEN (manual use only)
#   RUNNER_VERSION      actions/runner release to install (default below); RUNNER_SHA256 its tarball's
#                       SHA-256 from the release notes (required to download)
#   RUNNER_ROOT         where the runner is unpacked (default /var/lib/gitops-runner/runner)
#   GITOPS_BASE_VENV    venv holding jax[cuda12] (root-owned, read-only for the runner user)
#   GITOPS_JOB_VENV     per-job venv, recreated before every job (default /var/lib/gitops-runner/job-venv)
#   GITOPS_CACHE_ROOT   persistent caches: jax/ (compilation), runs/ (GITOPS_RUN_CACHE), pip/
#   RUNNER_GROUP        organisation runner group to join (gitops-gpu, or gitops-gpu-untrusted); see
#                       runners/runner-groups.yaml. Unset: the default group (repository runners)
#   GITOPS_RUNNER_TRUST trusted (default: same-repository PRs and releases, labels gpu, shared caches)
#                       or untrusted (approved fork PRs: labels gpu-untrusted, NO persistent cache at
#                       all, everything under the runner root wiped before every job)
set -euo pipefail

RUNNER_VERSION="${RUNNER_VERSION:-2.329.0}"
RUNNER_ROOT="${RUNNER_ROOT:-/var/lib/gitops-runner/runner}"
RUNNER_TOKEN_FILE="${RUNNER_TOKEN_FILE:-/run/gitops-runner/registration-token}"
GITOPS_RUNNER_TRUST="${GITOPS_RUNNER_TRUST:-trusted}"
if [ "$GITOPS_RUNNER_TRUST" = untrusted ]; then
  RUNNER_LABELS="${RUNNER_LABELS:-gpu-untrusted}"
else
  RUNNER_LABELS="${RUNNER_LABELS:-gpu}"
fi
RUNNER_GROUP="${RUNNER_GROUP:-}"
GITOPS_BASE_VENV="${GITOPS_BASE_VENV:-/opt/gitops-runner/base-venv}"
GITOPS_JOB_VENV="${GITOPS_JOB_VENV:-/var/lib/gitops-runner/job-venv}"
GITOPS_CACHE_ROOT="${GITOPS_CACHE_ROOT:-/var/cache/gitops}"
HOOK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "register-runner: $*" >&2; exit 1; }

check_trust() {
  # A runner that builds fork code must never look like a trusted one (and the other way round): the
  # labels decide which jobs it takes, and only trusted ones may share caches that releases reuse.
  case "$GITOPS_RUNNER_TRUST" in
    trusted)
      case ",$RUNNER_LABELS," in *,gpu-untrusted,*) die "a trusted runner must not carry gpu-untrusted" ;; esac ;;
    untrusted)
      case ",$RUNNER_LABELS," in *,gpu,*) die "an untrusted runner must not carry the label gpu" ;; esac
      case ",$RUNNER_LABELS," in *,gpu-untrusted,*) ;; *) die "an untrusted runner needs the label gpu-untrusted" ;; esac ;;
    *) die "GITOPS_RUNNER_TRUST must be trusted or untrusted" ;;
  esac
}

# owner/repo (or org) from the URL, for the REST call
scope_path() {
  local path="${GITHUB_URL#https://github.com/}"
  case "$path" in
    */*) echo "repos/${path%/}" ;;
    *) echo "orgs/${path%/}" ;;
  esac
}

fetch_token() {
  : "${GITHUB_URL:?set GITHUB_URL}"
  command -v gh >/dev/null || die "gh (GitHub CLI) is required to fetch a registration token"
  gh api --method POST "$(scope_path)/actions/runners/registration-token" --jq .token
}

cmd_fetch_token() {
  # Runs as root. The admin credential (GH_TOKEN, e.g. from a root-only EnvironmentFile or a GitHub
  # App) never reaches the runner user or any job: only the registration token does, and that file
  # is deleted again before the job starts.
  local dir token
  dir="$(dirname "$RUNNER_TOKEN_FILE")"
  install -d -m 0750 -o "${RUNNER_USER:-gitops-runner}" "$dir"
  token="$(fetch_token)"
  [ -n "$token" ] || die "empty registration token"
  umask 077
  printf '%s' "$token" > "$RUNNER_TOKEN_FILE"
  chown "${RUNNER_USER:-gitops-runner}" "$RUNNER_TOKEN_FILE"
}

install_runner() {
  [ -x "$RUNNER_ROOT/config.sh" ] && return 0
  : "${RUNNER_SHA256:?set RUNNER_SHA256 to the SHA-256 of actions-runner-linux-x64-${RUNNER_VERSION}.tar.gz}"
  local tarball="actions-runner-linux-x64-${RUNNER_VERSION}.tar.gz"
  local tmp
  tmp="$(mktemp -d)"
  curl -fsSL -o "$tmp/$tarball" \
    "https://github.com/actions/runner/releases/download/v${RUNNER_VERSION}/${tarball}"
  echo "${RUNNER_SHA256}  $tmp/$tarball" | sha256sum -c - >/dev/null || die "checksum mismatch for $tarball"
  mkdir -p "$RUNNER_ROOT"
  tar -xzf "$tmp/$tarball" -C "$RUNNER_ROOT"
  rm -rf "$tmp"
}

prepare_job_venv() {
  # A fresh venv per job: whatever a job pip-installs is gone before the next one. jax[cuda12] and its
  # CUDA wheels come from the base venv through a .pth file, so nothing big is downloaded per job.
  local python="$GITOPS_BASE_VENV/bin/python"
  [ -x "$python" ] || die "no base venv at $GITOPS_BASE_VENV (see runners/README.md)"
  rm -rf "$GITOPS_JOB_VENV"
  "$python" -m venv "$GITOPS_JOB_VENV"
  local base_site job_site
  base_site="$("$python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  job_site="$("$GITOPS_JOB_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  printf '%s\n' "$base_site" > "$job_site/zz-gitops-runner-base.pth"
}

write_runner_env() {
  # .env and .path are read by the runner and handed to every job.
  if [ "$GITOPS_RUNNER_TRUST" = untrusted ]; then
    # Fork code: per-job scratch caches, wiped before every job; no run cache at all.
    local scratch="$RUNNER_ROOT/_job-cache"
    rm -rf "$scratch"
    mkdir -p "$scratch/jax" "$scratch/pip"
    cat > "$RUNNER_ROOT/.env" <<ENV
LANG=C.UTF-8
GITOPS_RUNNER_PYTHON=$GITOPS_JOB_VENV/bin/python
JAX_COMPILATION_CACHE_DIR=$scratch/jax
PIP_CACHE_DIR=$scratch/pip
ACTIONS_RUNNER_HOOK_JOB_COMPLETED=$HOOK_DIR/job-completed.sh
GITOPS_JOB_VENV=$GITOPS_JOB_VENV
ENV
  else
    mkdir -p "$GITOPS_CACHE_ROOT/jax" "$GITOPS_CACHE_ROOT/runs" "$GITOPS_CACHE_ROOT/pip"
    cat > "$RUNNER_ROOT/.env" <<ENV
LANG=C.UTF-8
GITOPS_RUNNER_PYTHON=$GITOPS_JOB_VENV/bin/python
JAX_COMPILATION_CACHE_DIR=$GITOPS_CACHE_ROOT/jax
GITOPS_RUN_CACHE=$GITOPS_CACHE_ROOT/runs
PIP_CACHE_DIR=$GITOPS_CACHE_ROOT/pip
ACTIONS_RUNNER_HOOK_JOB_COMPLETED=$HOOK_DIR/job-completed.sh
GITOPS_JOB_VENV=$GITOPS_JOB_VENV
ENV
  fi
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES" >> "$RUNNER_ROOT/.env"
  fi
  printf '%s\n' "$GITOPS_JOB_VENV/bin:/usr/local/bin:/usr/bin:/bin" > "$RUNNER_ROOT/.path"
}

cmd_run() {
  : "${GITHUB_URL:?set GITHUB_URL}"
  local token="${RUNNER_TOKEN:-}"
  if [ -z "$token" ] && [ -r "$RUNNER_TOKEN_FILE" ]; then
    token="$(cat "$RUNNER_TOKEN_FILE")"
    rm -f "$RUNNER_TOKEN_FILE"
  fi
  if [ -z "$token" ]; then
    token="$(fetch_token)"
  fi
  [ -n "$token" ] || die "no registration token"
  unset RUNNER_TOKEN GH_TOKEN GITHUB_TOKEN

  check_trust
  install_runner
  # Start from nothing but the caches, also after a crash that skipped the job-completed hook.
  rm -rf "$RUNNER_ROOT/_work"
  if [ -n "${HOME:-}" ] && [ "$HOME" != "/" ]; then
    mkdir -p "$HOME"
    find "$HOME" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
  fi
  prepare_job_venv
  cd "$RUNNER_ROOT"
  # A leftover registration (crash mid-job) would block config.sh; --replace takes the name over.
  ./config.sh --unattended --ephemeral --replace --disableupdate \
    --url "$GITHUB_URL" --token "$token" \
    --name "$(hostname -s)-gpu-${INVOCATION_ID:-$$}" \
    --labels "$RUNNER_LABELS" \
    ${RUNNER_GROUP:+--runnergroup "$RUNNER_GROUP"} \
    --work "$RUNNER_ROOT/_work"
  unset token
  write_runner_env
  exec ./run.sh
}

case "${1:-}" in
  fetch-token) cmd_fetch_token ;;
  run) cmd_run ;;
  *) die "usage: $0 fetch-token|run" ;;
esac
