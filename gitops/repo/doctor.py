"""`gitops doctor`: what a runner needs to train, checked one by one, each failure with its fix.

A self-hosted runner that silently falls back to the CPU, fills its disk, or cannot write the
compilation cache wastes a PR's time; this makes those visible before training starts.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

MIN_FREE_GIB = 5.0
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


@dataclass(frozen=True)
class Check:
    """One runner doctor check: `ok`, what was found (`detail`) and, when it failed, the `fix` to apply.

    A failed check with `required` False is only a warning.
    """
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True  # a failed optional check is a warning

    def as_dict(self) -> dict:
        """The check as a JSON-ready dict of its fields (the doctor command's JSON output)."""
        return asdict(self)


def default_compilation_cache() -> Path:
    """The JAX persistent compilation cache folder: `$JAX_COMPILATION_CACHE_DIR`, else `~/.cache/gitops/jax`."""
    return Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or Path.home() / ".cache" / "gitops" / "jax")


def check_python() -> Check:
    """Python 3.11 or newer is running (detail: its version and executable)."""
    ok = sys.version_info >= (3, 11)
    return Check("python", ok, f"{platform.python_version()} ({sys.executable})", "" if ok else "install Python 3.11 or newer")


def check_packages() -> Check:
    """Every package in PACKAGES (jax, jaxlib, flax, optax, orbax-checkpoint, numpy) is installed, with versions."""
    found, missing = [], []
    for name in PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        return Check("packages", False, "missing: " + ", ".join(missing), "reinstall gitops from its wheel or git URL (README, \"Use gitops in your repository\"); jax[cuda12] on GPU runners")
    return Check("packages", True, ", ".join(found))


def check_devices(expect_gpu: bool) -> Check:
    """The devices JAX sees (count, platform, kinds, process count); fails when JAX cannot list them, or when
    `expect_gpu` and the platform is not "gpu". A CPU-only runner passes, with a note, when no GPU is expected.
    """
    try:
        import jax

        devices = jax.devices()
    except Exception as exc:  # a broken CUDA install raises many kinds of errors
        return Check("devices", False, f"JAX cannot list devices: {exc}", "check the CUDA driver and jax[cuda12] versions")
    kinds = sorted({d.device_kind for d in devices})
    platform_name = devices[0].platform if devices else "none"
    detail = f"{len(devices)} {platform_name} device(s): {', '.join(kinds)}; processes: {jax.process_count()}"
    if expect_gpu and platform_name != "gpu":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = "JAX sees no GPU: install jax[cuda12] in the runner's Python and check `nvidia-smi`"
        if visible is not None:
            hint += f" (CUDA_VISIBLE_DEVICES={visible!r})"
        return Check("devices", False, detail, hint)
    return Check("devices", True, detail, "" if platform_name == "gpu" else "CPU only: fine for tests, slow for training",
                 required=expect_gpu)


def check_disk(path: Path, min_free_gib: float) -> Check:
    """At least `min_free_gib` GiB (2**30 bytes) free on the file system of `path` (or its nearest existing parent)."""
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free / 2**30
    ok = free >= min_free_gib
    return Check(f"disk {path}", ok, f"{free:.1f} GiB free", "" if ok else f"free space: at least {min_free_gib:g} GiB needed")


def check_writable(label: str, path: Path, required: bool = True) -> Check:
    """`path` can be created and a file written in it (a temporary `.doctor-*` file, removed again).

    `label` names the check; `required` False makes a failure a warning.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(label, False, f"{path}: {exc.strerror or exc}", f"make {path} writable by the runner user", required)
    return Check(label, True, f"{path} is writable", required=required)


def check_git() -> Check:
    """The `git` executable is on PATH (detail: `git --version`)."""
    git = shutil.which("git")
    if not git:
        return Check("git", False, "git not found", "install git")
    version = subprocess.run([git, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return Check("git", True, version)


def check_coordinator(address: str, process_id: int, timeout: float = 3.0) -> Check:
    """The JAX multi-host coordinator `address` ("HOST:PORT") resolves and, unless this is process 0 (which
    will listen on it), accepts a TCP connection within `timeout` seconds.
    """
    host, _, port = address.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()):  # "²".isdigit() is True too
        return Check("coordinator", False, f"JAX_COORDINATOR_ADDRESS={address!r}", "set it to HOST:PORT")
    try:
        socket.getaddrinfo(host, int(port))
    except OSError as exc:
        return Check("coordinator", False, f"{host} does not resolve: {exc}", "check the headless Service / DNS name")
    if process_id == 0:
        return Check("coordinator", True, f"{address} (this process is the coordinator)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        return Check("coordinator", False, f"cannot connect to {address}: {exc}",
                     "start process 0 first and open the port between hosts")
    return Check("coordinator", True, f"{address} reachable")


def check_cluster(env: dict[str, str] | None = None) -> Check | None:
    """The multi-host setting `gitops train` would use (same parser: gitops.learn.parallel), then the coordinator.

    None when no JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID is set (one process).
    """
    from gitops.errors import UsageError
    from gitops.learn import parallel

    try:
        cluster = parallel.cluster_from(env=os.environ if env is None else env)
    except UsageError as exc:
        return Check("coordinator", False, exc.message,
                     f"set {parallel.ENV_COORDINATOR}, {parallel.ENV_NUM_PROCESSES} and {parallel.ENV_PROCESS_ID} "
                     "together (runners/kubernetes/multihost-job.yaml does)")
    if cluster is None:
        return None
    check = check_coordinator(cluster.coordinator, cluster.process_id)
    return Check(check.name, check.ok, f"{check.detail}; process {cluster.process_id} of {cluster.num_processes}",
                 check.fix, check.required)


def run_checks(*, expect_gpu: bool, runs_dir: Path, min_free_gib: float = MIN_FREE_GIB) -> list[Check]:
    """Every check for a training runner, in order: Python, packages, git, devices, free disk and a writable run
    folder `runs_dir`, the compilation cache (optional), the run cache when `$GITOPS_RUN_CACHE` is set, and
    the multi-host coordinator when one is configured.
    """
    checks = [check_python(), check_packages(), check_git(), check_devices(expect_gpu)]
    checks.append(check_disk(runs_dir, min_free_gib))
    checks.append(check_writable("run folder", runs_dir))
    checks.append(check_writable("compilation cache", default_compilation_cache(), required=False))
    from gitops.registry import runs

    cache = runs.cache_dir()
    if cache is not None:
        checks.append(check_writable(f"run cache ({runs.RUN_CACHE_ENV})", cache))
        checks.append(check_disk(cache, min_free_gib))
    cluster = check_cluster()
    if cluster is not None:
        checks.append(cluster)
    return checks
