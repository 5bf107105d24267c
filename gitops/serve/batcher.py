"""Dynamic batching: concurrent requests share one padded batch, each batch on one model version.

Requests arrive on the event loop; a single worker task takes the first waiting item, gathers more
until the batch holds the version's largest batch or its max wait has passed since the first (it
waits only while other requests are being read and parsed: a lone request runs at once), and runs the
version's predict (in a worker thread when it is slow, see below).

A lone client's request (nothing queued, nothing executing, no other request on its way, no other
client seen lately) whose predict took at most `INLINE_MAX_S` at warm-up runs inline on the event
loop instead, without even a trip through the queue: the hop to the worker thread and back (a queue
put, a GIL hand-over and a self-pipe wake-up) cost more than a small model's whole forward pass, and
with one client there is nothing to overlap with. For the same reason a gathered batch whose bucket
took at most `INLINE_MAX_S` at warm-up runs on the event loop too (with 16 clients and a small model
that cut the server's CPU per request by a fifth); slower batches go to the thread, where the event
loop keeps reading requests while they run. A batch
never mixes versions: an item carries the version its request pinned on arrival, and the worker stops
gathering at the first item of another version. So every response comes from one whole version, even
while the follower switches versions under load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from gitops.serve.version import ServedVersion

INLINE_MAX_S = 0.001  # a predict this short (at warm-up) may run on (and block) the event loop


class Overloaded(Exception):
    """The queue holds more rows than allowed: the caller answers 503 and the client retries."""


@dataclass
class _Item:
    version: ServedVersion
    x: np.ndarray
    future: asyncio.Future = field(repr=False)

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


class Batcher:
    """Groups concurrent predict calls into batches.

    The limits come from the version a batch runs on (`ServedVersion.max_batch_size`, `.max_wait_s`,
    from its release.yaml `serving` or the command-line flags), so a new release's settings apply
    from the moment it is switched to. Requests with more rows than a batch are split into chunks,
    all on the version their request pinned.

    Args:
        max_queue_rows: rows waiting beyond which `submit` raises Overloaded.
        on_batch: called with the rows of each executed batch (metrics).
    """

    def __init__(self, *, max_queue_rows: int = 8192, on_batch: Callable[[int], None] | None = None):
        self.max_queue_rows = max_queue_rows
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._getter: asyncio.Future | None = None
        self._queued_rows = 0
        self._executing = False  # a batch is running (in the worker thread)
        # Requests the server has accepted but not yet submitted (body being read or parsed). A batch
        # waits for company only while some are on their way: alone, it runs at once.
        self.arriving = 0
        # One thread runs every batch: device work is serialized, the event loop never blocks.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gitops-predict")

    async def submit(self, version: ServedVersion, x: np.ndarray, *, lone: bool = False) -> np.ndarray:
        """Predict all rows of `x` on `version`; returns the outputs in order.

        `lone`: the caller knows no other client is sending (see `ModelServer`): a small request may
        then run inline. With several clients the worker thread overlaps predicts with the event
        loop's HTTP work, which pays more than the hop costs.
        """
        rows = int(x.shape[0])
        if (lone and self.arriving == 0 and not self._executing and self._queued_rows == 0
                and version.quick(rows, INLINE_MAX_S)):
            y = version.predict(x)  # alone and small: inline, no thread hop (see the module docstring)
            if self.on_batch is not None:
                self.on_batch(rows)
            return y
        self._ensure_worker()
        if self._queued_rows + rows > self.max_queue_rows:
            raise Overloaded(f"{self._queued_rows} rows already waiting")
        loop = asyncio.get_running_loop()
        futures = []
        step = version.max_batch_size
        for start in range(0, rows, step):
            chunk = x[start:start + step]
            fut = loop.create_future()
            self._queued_rows += chunk.shape[0]
            self._queue.put_nowait(_Item(version, chunk, fut))
            futures.append(fut)
        parts = await asyncio.gather(*futures)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _ensure_worker(self) -> None:
        if self._task is None or self._task.done():
            self._queue = self._queue or asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="gitops-batcher")

    async def close(self) -> None:
        """Cancel the worker task and shut the predict thread down (work not yet started there is cancelled).

        Called from the server's lifespan on shutdown; safe to call when no worker ever started.
        """
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        if self._getter is not None:
            self._getter.cancel()
            self._getter = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _next(self, timeout: float | None) -> _Item | None:
        """The next queued item, waiting up to `timeout` seconds (None: forever); None on timeout.

        A pending `queue.get()` survives a timeout and is reused, so no item is ever lost to a
        cancelled get.
        """
        if self._getter is None:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                pass
            if timeout is not None and (timeout <= 0 or self.arriving == 0):
                return None
            self._getter = asyncio.ensure_future(self._queue.get())
        if timeout is not None and (timeout <= 0 or self.arriving == 0):
            if not self._getter.done():
                return None
        else:
            done, _ = await asyncio.wait({self._getter}, timeout=timeout)
            if not done:
                return None
        item, self._getter = self._getter.result(), None
        return item

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        held: _Item | None = None  # taken from the queue but belongs to the next batch
        while True:
            first, held = (held, None) if held is not None else (await self._next(None), None)
            batch, rows = [first], first.rows
            limit = first.version.max_batch_size
            deadline = loop.time() + first.version.max_wait_s
            while rows < limit:
                item = await self._next(deadline - loop.time())
                if item is None:
                    break
                if item.version is not first.version or rows + item.rows > limit:
                    held = item
                    break
                batch.append(item)
                rows += item.rows
            await self._execute(batch, rows)

    async def _execute(self, batch: list[_Item], rows: int) -> None:
        loop = asyncio.get_running_loop()
        version = batch[0].version
        x = batch[0].x if len(batch) == 1 else np.concatenate([it.x for it in batch])
        self._executing = True
        try:
            if version.quick(rows, INLINE_MAX_S):
                y = version.predict(x)  # a short batch: the thread hop would cost more than it saves
            else:
                y = await loop.run_in_executor(self._executor, version.predict, x)
        except Exception as exc:  # the model failed: every caller in this batch gets the error
            for it in batch:
                self._queued_rows -= it.rows
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        finally:
            self._executing = False
        if self.on_batch is not None:
            self.on_batch(rows)
        start = 0
        for it in batch:
            self._queued_rows -= it.rows
            if not it.future.done():  # a client that went away cancelled its future
                it.future.set_result(y[start:start + it.rows])
            start += it.rows
