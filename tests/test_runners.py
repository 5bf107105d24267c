"""Self-hosted runner setup under runners/: scripts parse, manifests carry what GPU scheduling needs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RUNNERS = ROOT / "runners"
SCRIPTS = sorted(RUNNERS.rglob("*.sh"))
YAMLS = sorted([*RUNNERS.rglob("*.yaml"), *RUNNERS.rglob("*.yml")])


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def kind(path: Path, name: str) -> dict:
    return next(d for d in docs(path) if d.get("kind") == name)


def test_layout():
    for rel in (
        "README.md",
        "single-host/register-runner.sh",
        "single-host/job-completed.sh",
        "single-host/gitops-runner.service",
        "kubernetes/values.yaml",
        "kubernetes/Dockerfile",
        "kubernetes/multihost-job.yaml",
    ):
        assert (RUNNERS / rel).is_file(), rel


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(RUNNERS)))
def test_shell_scripts_parse_and_are_strict(script):
    bash = shutil.which("bash")
    assert bash
    result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert script.stat().st_mode & 0o111, "executable bit"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(RUNNERS)))
def test_yaml_parses(path):
    assert docs(path)


def test_register_script_makes_an_ephemeral_gpu_runner_from_the_official_tarball():
    text = (RUNNERS / "single-host/register-runner.sh").read_text(encoding="utf-8")
    assert "--ephemeral" in text and "--unattended" in text
    assert "github.com/actions/runner/releases/download/" in text
    assert "sha256sum -c" in text
    assert "actions/runners/registration-token" in text and "gh api" in text
    assert 'RUNNER_LABELS="${RUNNER_LABELS:-gpu}"' in text
    # credentials never reach the runner process (and so no job)
    assert "unset RUNNER_TOKEN GH_TOKEN GITHUB_TOKEN" in text
    for var in ("JAX_COMPILATION_CACHE_DIR", "GITOPS_RUN_CACHE", "ACTIONS_RUNNER_HOOK_JOB_COMPLETED"):
        assert var in text


def test_cleanup_hook_keeps_the_caches():
    text = (RUNNERS / "single-host/job-completed.sh").read_text(encoding="utf-8")
    assert "RUNNER_WORKSPACE" in text and "rm -rf" in text
    assert "GITOPS_CACHE_ROOT" not in re.findall(r"rm -rf [^\n]*", text)[0]
    assert not re.search(r"rm -rf [^\n]*(JAX_COMPILATION_CACHE_DIR|GITOPS_RUN_CACHE)", text)


def test_systemd_unit_loops_over_ephemeral_registrations():
    text = (RUNNERS / "single-host/gitops-runner.service").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^\[(\w+)\]\n(.*?)(?=^\[|\Z)", text, flags=re.M | re.S))
    service = sections["Service"]
    assert re.search(r"^ExecStart=\S*register-runner\.sh run$", service, flags=re.M)
    assert re.search(r"^Restart=always$", service, flags=re.M)
    assert re.search(r"^User=gitops-runner$", service, flags=re.M), "never run jobs as root"
    stop = re.search(r"^TimeoutStopSec=(\d+)min$", service, flags=re.M)  # the grace period before SIGKILL
    assert stop and int(stop.group(1)) >= 2, "longer than a checkpoint save"
    assert "WantedBy=multi-user.target" in sections["Install"]


def test_pods_give_training_a_grace_period_longer_than_a_checkpoint_save():
    values = docs(RUNNERS / "kubernetes/values.yaml")[0]
    assert values["template"]["spec"]["terminationGracePeriodSeconds"] >= 120
    job = kind(RUNNERS / "kubernetes/multihost-job.yaml", "Job")
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 120


def test_scale_set_values_request_one_gpu_on_the_gpu_pool_with_the_cache_volume():
    values = docs(RUNNERS / "kubernetes/values.yaml")[0]
    assert values["scaleSetLabels"] == ["linux", "gpu"]
    spec = values["template"]["spec"]
    runner = next(c for c in spec["containers"] if c["name"] == "runner")
    assert runner["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    env = {e["name"]: e["value"] for e in runner["env"]}
    mounts = {m["name"]: m["mountPath"] for m in runner["volumeMounts"]}
    assert env["JAX_COMPILATION_CACHE_DIR"].startswith(mounts["cache"] + "/")
    assert env["GITOPS_RUN_CACHE"].startswith(mounts["cache"] + "/")
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = volumes["cache"]["persistentVolumeClaim"]["claimName"]
    pvc = kind(RUNNERS / "kubernetes/cache-pvc.yaml", "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_runner_image_is_the_official_runner_with_cuda_jax_and_gitops():
    text = (RUNNERS / "kubernetes/Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM ghcr\.io/actions/actions-runner:", text, flags=re.M)
    assert '"jax[cuda12]"' in text
    assert "pip install --no-cache-dir /opt/gitops/src" in text
    assert "GITOPS_RUNNER_PYTHON=" in text
    assert re.search(r"^USER runner$", text, flags=re.M)


def test_multihost_job_is_indexed_with_a_headless_service_and_jax_env():
    path = RUNNERS / "kubernetes/multihost-job.yaml"
    service = kind(path, "Service")
    job = kind(path, "Job")
    assert service["spec"]["clusterIP"] == "None"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] >= 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert [container["command"][0], *container["args"]][:2] == ["gitops", "train"]
    assert container["args"][-2:] == ["--out", "/runs"]
    env = {e["name"]: e for e in container["env"]}
    port = service["spec"]["ports"][0]["port"]
    coordinator = f"{job['metadata']['name']}-0.{service['metadata']['name']}:{port}"
    assert env["JAX_COORDINATOR_ADDRESS"]["value"] == coordinator
    assert env["JAX_NUM_PROCESSES"]["value"] == str(spec["completions"])
    assert env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )


def test_untrusted_scale_set_is_separate_and_shares_no_cache():
    trusted = docs(RUNNERS / "kubernetes/values.yaml")[0]
    untrusted = docs(RUNNERS / "kubernetes/values-untrusted.yaml")[0]
    groups = {g["name"]: g for g in yaml.safe_load((RUNNERS / "runner-groups.yaml").read_text())["groups"]}
    assert trusted["runnerGroup"] == "gitops-gpu" and groups["gitops-gpu"]["trust"] == "trusted"
    assert untrusted["runnerGroup"] == "gitops-gpu-untrusted" and groups["gitops-gpu-untrusted"]["trust"] == "untrusted"
    assert untrusted["runnerScaleSetName"] != trusted["runnerScaleSetName"]
    assert untrusted["scaleSetLabels"] == [x for x in groups["gitops-gpu-untrusted"]["labels"] if x != "self-hosted"]
    assert trusted["scaleSetLabels"] == [x for x in groups["gitops-gpu"]["labels"] if x != "self-hosted"]
    spec = untrusted["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v], "no shared volume"
    runner = next(c for c in spec["containers"] if c["name"] == "runner")
    env = {e["name"]: e["value"] for e in runner["env"]}
    assert env["GITOPS_RUN_CACHE"] == "", "the image's default run cache is switched off"


def test_single_host_runner_keeps_trust_levels_apart(tmp_path):
    """register-runner.sh refuses mixed labels and gives an untrusted runner no run cache."""
    script = RUNNERS / "single-host/register-runner.sh"
    text = script.read_text(encoding="utf-8")
    assert '${RUNNER_GROUP:+--runnergroup "$RUNNER_GROUP"}' in text
    bash = shutil.which("bash")
    for trust, labels, ok in (("untrusted", "gpu", False), ("trusted", "gpu,gpu-untrusted", False),
                              ("untrusted", "gpu-untrusted", True), ("other", "gpu", False)):
        # source the script's functions without running a command, then call check_trust
        probe = (f'set -euo pipefail; eval "$(sed -e \'/^case "${{1:-}}" in/,$d\' {script})"; check_trust')
        env = {"PATH": "/usr/bin:/bin", "GITOPS_RUNNER_TRUST": trust, "RUNNER_LABELS": labels}
        done = subprocess.run([bash, "-c", probe], env=env, capture_output=True, text=True)
        assert (done.returncode == 0) is ok, (trust, labels, done.stderr)
    # an untrusted runner's job environment has no run cache and only scratch caches
    env = {"PATH": "/usr/bin:/bin", "GITOPS_RUNNER_TRUST": "untrusted", "RUNNER_ROOT": str(tmp_path / "r"),
           "GITOPS_JOB_VENV": "/nonexistent"}
    (tmp_path / "r").mkdir()
    probe = f'set -euo pipefail; eval "$(sed -e \'/^case "${{1:-}}" in/,$d\' {script})"; write_runner_env'
    done = subprocess.run([bash, "-c", probe], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "r/.env").read_text()
    assert "GITOPS_RUN_CACHE" not in written and f"{tmp_path}/r/_job-cache/jax" in written
