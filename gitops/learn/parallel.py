"""Data-parallel and multi-host training: the device mesh, where arrays live, and who writes files.

With one device nothing here changes the loop (`layout()` returns None). With more devices visible
(several GPUs, `XLA_FLAGS=--xla_force_host_platform_device_count=N` on a CPU, or several processes
joined by `jax.distributed`), training runs data-parallel with no config change:

- one mesh `Mesh(jax.devices(), ("data",))` over every device of every process;
- the global batch is `train.batch_size`; each step's batch indexes are constrained to `P("data")`,
  so the gather from the (replicated) training split runs sharded: every device materializes only
  its slice of the batch, and gradients are all-reduced by XLA. `batch_size` (and each micro-batch
  under gradient accumulation) must divide by the device count: otherwise training stops with an
  error naming both numbers. We refuse rather than pad: padding would change the loss (a mean over a
  different batch) and so the run's result with the hardware, which the training fingerprint (the
  run cache's key) does not know about;
- state (params, optimizer state, BatchNorm statistics) is replicated `P()` (strategy `data`), or,
  with `train.parallelism.strategy: fsdp`, every array with at least `FSDP_MIN_SIZE` elements is split
  over the data axis along its largest divisible dimension (XLA all-gathers it where used);
  checkpoints hold host arrays either way (gitops.learn.checkpoint), so they restore on any device count;
- evaluation batches are padded (weight 0) to a multiple of the device count and sharded the same way.

Multi-host: every process loads the same deterministic data split and builds the same initial state
(same seed), so replicated arrays are assembled from each process's identical local copy with
`jax.make_array_from_process_local_data`; the batch slice each process's devices compute is a
function of the step alone, so no host ever ships examples to another. `gitops train` joins the
cluster from `--coordinator/--num-processes/--process-id` or from `JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` before anything touches jax. Only process 0 writes the run
folder's files; all processes take part in Orbax's collective checkpoint save into the one
(shared) checkpoint directory.

Nothing here imports jax at module level: `gitops doctor` parses the same environment cheaply.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gitops.errors import TrainingError, UsageError

AXIS = "data"
STRATEGIES = ("data", "fsdp")
FSDP_MIN_SIZE = 2**14  # elements; smaller arrays stay replicated (sharding them costs more than it saves)
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


# --- joining a multi-host cluster -----------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """Where process 0 listens and who this process is."""

    coordinator: str
    num_processes: int
    process_id: int


def _as_int(value: Any, name: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise UsageError(f"{name}={value!r} is not an integer") from None


def cluster_from(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Cluster | None:
    """The cluster this process should join: flags first, then the environment; None for one process.

    Raises:
        UsageError: a partial or inconsistent setting (e.g. an address without a process id).
    """
    env = os.environ if env is None else env
    address = coordinator or (env.get(ENV_COORDINATOR) or "").strip() or None
    count = num_processes if num_processes is not None else env.get(ENV_NUM_PROCESSES) or None
    index = process_id if process_id is not None else env.get(ENV_PROCESS_ID) or None
    if address is None and count is None and index is None:
        return None
    count = _as_int(count, ENV_NUM_PROCESSES) if count is not None else None
    index = _as_int(index, ENV_PROCESS_ID) if index is not None else None
    if count == 1 and address is None:
        return None
    missing = [name for name, value in (("--coordinator / " + ENV_COORDINATOR, address),
                                        ("--num-processes / " + ENV_NUM_PROCESSES, count),
                                        ("--process-id / " + ENV_PROCESS_ID, index)) if value is None]
    if missing:
        raise UsageError("multi-host training needs all three of coordinator, process count and process id; missing: "
                         + ", ".join(missing))
    host, _, port = address.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()):  # "²".isdigit() is True too
        raise UsageError(f"coordinator address {address!r} is not HOST:PORT")
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"process id {index} is not in [0, {count}) (num processes {count})")
    return Cluster(address, count, index)


def initialize(cluster: Cluster | None) -> None:
    """`jax.distributed.initialize` for `cluster` (no-op for None or when already joined).

    Must run before anything lists devices: call it first thing in a command.
    """
    if cluster is None or cluster.num_processes == 1:
        return
    import jax

    if jax.distributed.is_initialized():
        return
    try:
        jax.distributed.initialize(
            coordinator_address=cluster.coordinator,
            num_processes=cluster.num_processes,
            process_id=cluster.process_id,
        )
    except Exception as exc:  # noqa: BLE001 - jax raises RuntimeError/XlaRuntimeError/ValueError here
        raise TrainingError(f"could not join the cluster at {cluster.coordinator} as process "
                            f"{cluster.process_id} of {cluster.num_processes}: {exc}") from exc


def joined() -> bool:
    """Whether this process joined a multi-process cluster (never imports jax itself)."""
    jax = sys.modules.get("jax")
    return bool(jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1)


def is_primary() -> bool:
    """True on the process that writes the run folder (process 0; the only one without a cluster)."""
    if not joined():
        return True
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process got here (no-op with one process)."""
    if joined():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# --- the mesh and where arrays live -----------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """The mesh of one run and the shardings its arrays use."""

    mesh: Any
    strategy: str

    @property
    def device_count(self) -> int:
        """Number of devices in the mesh (all visible devices, over every process)."""
        return self.mesh.size

    @property
    def batch(self) -> Any:
        """Sharding of a batch (leading axis) over the data axis."""
        from jax.sharding import NamedSharding, PartitionSpec

        return NamedSharding(self.mesh, PartitionSpec(AXIS))

    @property
    def replicated(self) -> Any:
        """A NamedSharding that keeps a full copy of the array on every device (metrics, keys, data-parallel state)."""
        from jax.sharding import NamedSharding, PartitionSpec

        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def eval_batches(self) -> Any:
        """Sharding of padded eval splits `(batches, batch, ...)`: the batch axis over the data axis."""
        from jax.sharding import NamedSharding, PartitionSpec

        return NamedSharding(self.mesh, PartitionSpec(None, AXIS))

    def describe(self) -> dict:
        """The layout as JSON for the run manifest: {"strategy": ..., "mesh": {"data": devices}}."""
        return {"strategy": self.strategy, "mesh": {AXIS: self.device_count}}

    def check_batch(self, batch_size: int, accumulate: int = 1) -> None:
        """Refuse a global batch (or micro-batch) that does not split evenly over the devices."""
        n = self.device_count
        if batch_size % n:
            raise TrainingError(
                f"train.batch_size {batch_size} does not divide evenly over {n} devices (data parallel): "
                f"use a multiple of {n}, or make fewer devices visible"
            )
        micro = batch_size // max(1, accumulate)
        if micro % n:
            raise TrainingError(
                f"micro-batch {micro} (batch_size {batch_size} / gradient_accumulation {accumulate}) does not "
                f"divide evenly over {n} devices: use a micro-batch that is a multiple of {n}"
            )

    def state_sharding(self, leaf: Any) -> Any:
        """Replicated, or (fsdp) split along the largest dimension the device count divides."""
        from jax.sharding import NamedSharding, PartitionSpec

        shape = tuple(getattr(leaf, "shape", ()))
        if self.strategy != "fsdp" or math.prod(shape) < FSDP_MIN_SIZE:
            return self.replicated
        candidates = [(size, axis) for axis, size in enumerate(shape) if size % self.device_count == 0]
        if not candidates:
            return self.replicated
        _, axis = max(candidates)
        spec = [None] * len(shape)
        spec[axis] = AXIS
        return NamedSharding(self.mesh, PartitionSpec(*spec))

    def shardings_like(self, tree: Any) -> Any:
        """A tree of shardings with the structure of `tree`, one per leaf from `state_sharding` (replicated, or split
        along one axis under fsdp).
        """
        import jax

        return jax.tree.map(self.state_sharding, tree)

    def put(self, tree: Any, shardings: Any) -> Any:
        """Global arrays from host-local values that every process holds in full (same seed, same data)."""
        import jax
        import numpy as np

        if jax.process_count() == 1:
            return jax.device_put(tree, shardings)

        def one(value: Any, sharding: Any) -> Any:
            if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
                impl = jax.random.key_impl(value)
                data = one(jax.random.key_data(value), sharding)
                return jax.jit(lambda d: jax.random.wrap_key_data(d, impl=impl), out_shardings=sharding)(data)
            local = np.asarray(value)
            # every process passes the whole array: the slice its devices hold is cut from it
            return jax.make_array_from_callback(local.shape, sharding, lambda index: local[index])

        return jax.tree.map(one, tree, shardings)

    def replicate(self, tree: Any) -> Any:
        """`tree` as global arrays replicated on every device of the mesh (see `put`)."""
        import jax

        return self.put(tree, jax.tree.map(lambda _: self.replicated, tree))

    def place_state(self, state: Any) -> Any:
        """The model/optimizer `state` as global arrays in their state shardings (replicated, or fsdp-split parameters),
        ready for the jitted step.
        """
        return self.put(state, self.shardings_like(state))


def layout(strategy: str = "data") -> Layout | None:
    """The run's mesh over every visible device; None with a single device (the plain path)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    if strategy not in STRATEGIES:
        raise TrainingError(f"unknown parallelism strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if jax.device_count() == 1:
        return None
    return Layout(Mesh(np.array(jax.devices()), (AXIS,)), strategy)


def strategy_of(train: Any) -> str:
    """`train.parallelism.strategy` of a train config ("data" when unset or absent): the name `layout` expects."""
    spec = getattr(train, "parallelism", None) or {}
    return str(spec.get("strategy", "data"))


def fetch(tree: Any) -> Any:
    """Host (numpy) values of a tree of replicated arrays, also on a multi-host mesh.

    `jax.device_get` refuses arrays that span other processes' devices even when every device holds
    the whole value; a replicated array's local shard is the value.
    """
    import jax
    import numpy as np

    def one(value: Any) -> Any:
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            if not value.is_fully_replicated:
                from jax.experimental import multihost_utils

                return np.asarray(multihost_utils.process_allgather(value, tiled=True))
            return np.asarray(value.addressable_data(0))
        return value

    return jax.device_get(jax.tree.map(one, tree))


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= `value` (both positive ints), e.g. an eval batch padded to split
    evenly over devices.
    """
    return -(-value // multiple) * multiple
