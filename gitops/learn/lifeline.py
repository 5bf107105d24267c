"""Child processes that end with the process that started them, however that one dies (SIGKILL included).

Training starts two kinds of child processes that would otherwise outlive a killed parent:

- Grain's `mp_prefetch` workers (`data.dataset.workers`): spawned, daemonic, but "daemonic" only means
  the parent terminates them at a *clean* exit. After `kill -9` of the trainer they are re-parented (to
  init or a subreaper) and keep looping with their buffers full, ~200 MB each, and multiprocessing's
  resource tracker lives on with them, because it exits only when every holder of its pipe has closed it.
- `gitops sweep --parallel` trials (`gitops train MODEL --trial N` subprocesses): after `kill -9` of the
  sweep they would go on training, and a later sweep would resume the same run folders beside them.

Each child therefore runs `watch_parent`: a daemon thread that polls `os.getppid()` against the PID of
the process that started it (recorded there, before the child exists) every `POLL_S` seconds and acts as
soon as it differs. A Grain worker exits at once (`ExitWithParent`, Grain's `worker_init_fn`): its
parent is gone and nothing reads its output. A sweep trial gets SIGTERM (`watch_env_parent`), which stops
training at a step boundary with a committed checkpoint, as the sweep itself does to its trials on
Ctrl-C; if it is still running `GRACE_S` seconds later it exits hard.

Linux's `PR_SET_PDEATHSIG` is not used: it fires when the *thread* that spawned the child exits, and
Grain spawns its workers from its own prefetch threads, which it joins and replaces on `set_state`
(every resume): measured, both workers were SIGKILLed by that while the trainer went on. It is also
Linux-only. Polling works for any parent death and any start method.

Shared memory: Grain's workers hand batches over in POSIX shared memory (`/dev/shm/psm_*`) and Grain's
queues use named semaphores (`/dev/shm/sem.mp-*`), all registered with the resource tracker. Once the
workers have exited, the tracker sees the end of its pipe, unlinks what the killed run left registered
(printing Python's "leaked shared_memory objects" warning on the killed run's stderr) and exits. Killing
the tracker too (`kill -9` of the whole process group) leaves those entries in /dev/shm for good.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

POLL_S = 0.25  # seconds between checks of the parent PID: one getppid() call each, in a daemon thread
GRACE_S = 60.0  # seconds an orphaned sweep trial gets to checkpoint and stop after SIGTERM before a hard exit
PARENT_ENV = "GITOPS_PARENT_PID"  # set by `gitops sweep --parallel` for its trial processes
EXIT_ORPHANED = 1  # exit status of a Grain worker whose parent died (nobody is left to read it)


def watch_parent(parent: int, on_orphaned: Callable[[], None], poll_s: float = POLL_S) -> threading.Thread:
    """Start a daemon thread that calls `on_orphaned()` once, as soon as `os.getppid() != parent`.

    `parent` is the PID of the process that started this one, as that process knew it (not read here
    with `os.getppid()`, which would already be init's PID if the parent died before this call).
    Returns the started thread.
    """

    def run() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        on_orphaned()

    thread = threading.Thread(target=run, name="gitops-lifeline", daemon=True)
    thread.start()
    return thread


def _exit_now() -> None:
    os._exit(EXIT_ORPHANED)  # no cleanup: the parent that would read our queues and shared memory is gone


class ExitWithParent:
    """Grain's `worker_init_fn` `(worker_index, worker_count) -> None`: the worker exits when its parent dies.

    Built in the training process (it records that PID) and pickled into each spawned worker; it holds
    one int, so it pickles with `pickle` and `cloudpickle` alike. It does not touch the data: batches and
    their order are those of a run without it.
    """

    def __init__(self, parent: int | None = None, poll_s: float = POLL_S):
        self.parent = os.getpid() if parent is None else int(parent)
        self.poll_s = float(poll_s)

    def __call__(self, worker_index: int = 0, worker_count: int = 1) -> None:
        watch_parent(self.parent, _exit_now, self.poll_s)


def _terminate_then_exit(grace_s: float) -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # training checkpoints at the next step boundary and exits 143
    time.sleep(grace_s)
    os._exit(128 + signal.SIGTERM)  # still here: stuck somewhere SIGTERM cannot reach


def watch_env_parent(environ: dict | None = None, grace_s: float = GRACE_S) -> threading.Thread | None:
    """In a process started with `GITOPS_PARENT_PID` (a sweep trial): SIGTERM ourselves when that parent dies.

    The variable is removed from `environ` (default `os.environ`), so processes this one starts do not
    watch our parent. Returns the watching thread, or None when the variable is absent or not a PID.
    """
    environ = os.environ if environ is None else environ
    value = environ.pop(PARENT_ENV, None)
    if not value or not value.strip().isdigit():
        return None
    return watch_parent(int(value), lambda: _terminate_then_exit(grace_s))
