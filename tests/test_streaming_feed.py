"""The streaming feed path: ArrayRecord batches decoded at once, and the read-ahead that places batches.

- `ArrayRecordSource.read_batch` reads a batch of records and decodes `np.savez` records of one
  layout with one view per array; every batch must hold exactly what `np.load`, record by record,
  gives (also for records of other layouts in the same file, which take the record-by-record path);
- `Feed` reads ahead in a thread: the batches, and the state a checkpoint keeps after each batch,
  are those of a feed that reads nothing ahead; a record error reaches the training thread as one
  clear GitopsError; `close()` stops the thread.
"""

from __future__ import annotations

import io
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from gitops.errors import GitopsError
from gitops.learn import sources, streaming
from gitops.learn.preprocessing import Preprocessing


def _npz(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _write(path: Path, records: list[bytes], options: str = "group_size:1") -> str:
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(path), options)
    for record in records:
        writer.write(record)
    writer.close()
    return str(path)


def _by_np_load(record: bytes, task: str) -> tuple[np.ndarray, np.ndarray]:
    """What a record holds, read the plain way (the reference the batch decode must equal)."""
    with np.load(io.BytesIO(record)) as npz:
        x, y = np.asarray(npz["x"], np.float32), np.asarray(npz["y"])
    return x, (y.astype(np.int32) if task == "classification" else y.astype(np.float32).reshape(-1))


def _assert_batch(source: sources.ArrayRecordSource, records: list[bytes], indexes: list[int],
                  reference: list[tuple[np.ndarray, np.ndarray]] | None = None) -> None:
    """`reference[i]`, when given, is `_by_np_load(records[i])` computed beforehand (threads must not call
    np.load side by side: CPython 3.11's AST constructor, which parses .npy headers, is not thread-safe)."""
    x, y = source.read_batch(indexes)
    want = [reference[i] if reference is not None else _by_np_load(records[i], source.task) for i in indexes]
    assert x.dtype == np.float32 and x.shape == (len(indexes), *want[0][0].shape)
    assert y.dtype == want[0][1].dtype and y.shape == (len(indexes), *want[0][1].shape)
    for row, (wx, wy) in enumerate(want):
        assert np.array_equal(x[row], wx) and np.array_equal(y[row], wy), row


def test_array_record_batches_hold_what_np_load_reads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # one layout: float64 2-D inputs, int64 labels (np.savez's defaults for Python numbers)
    same = [_npz(x=rng.normal(size=(2, 3)), y=np.int64(rng.integers(0, 5))) for _ in range(40)]
    source = sources.ArrayRecordSource([_write(tmp_path / "a.array_record", same)], "x", "y", "classification")
    order = rng.permutation(40).tolist()
    _assert_batch(source, same, order[:16])
    assert source._layout is not None  # the batch was decoded at once, not record by record
    x, y = source[order[3]]  # a record alone is a batch of one
    assert np.array_equal(x, _by_np_load(same[order[3]], "classification")[0]) and y.shape == ()

    # records of other layouts in one file: big-endian inputs, a compressed record, the arrays in the
    # other order, and int32 inputs of the same length as float32 ones (same size, other header bytes)
    mixed = [_npz(x=rng.random(6, dtype=np.float32), y=np.int64(1)) for _ in range(6)]
    mixed += [_npz(x=rng.random(6, dtype=np.float32).astype(">f4"), y=np.int64(2)),
              _npz(compressed=True, x=rng.random(6, dtype=np.float32), y=np.int64(3)),
              _npz(y=np.int64(4), x=rng.random(6, dtype=np.float32)),
              _npz(x=rng.integers(-9, 9, 6).astype(np.int32), y=np.int64(0))]
    files = [_write(tmp_path / "m0.array_record", mixed[:5]), _write(tmp_path / "m1.array_record", mixed[5:])]
    source = sources.ArrayRecordSource(files, "x", "y", "classification")
    assert len(source) == 10
    _assert_batch(source, mixed, [9, 0, 6, 3, 7, 8, 1])  # across both files, out of order
    _assert_batch(source, mixed, [5, 0, 1])  # one layout again
    _assert_batch(source, mixed, [9])  # an int32 record alone: its own layout

    regression = [_npz(x=rng.random(3, dtype=np.float32), y=np.float64(rng.normal())) for _ in range(5)]
    source = sources.ArrayRecordSource([_write(tmp_path / "r.array_record", regression)], "x", "y", "regression")
    _assert_batch(source, regression, [4, 1, 2])


def test_array_record_reads_chunks_of_many_records_and_shares_a_source_between_threads(tmp_path: Path) -> None:
    # records are read one by one, in file order, through one reader per file: chunks of several records
    # (group_size:4, zstd and uncompressed), a record asked for twice, and threads reading side by side
    rng = np.random.default_rng(1)
    records = [_npz(x=rng.random(5, dtype=np.float32), y=np.int64(i % 7)) for i in range(30)]
    files = [_write(tmp_path / "g0.array_record", records[:13], "group_size:4"),
             _write(tmp_path / "g1.array_record", records[13:], "group_size:4,uncompressed")]
    source = sources.ArrayRecordSource(files, "x", "y", "classification")
    _assert_batch(source, records, [29, 3, 12, 13, 3, 0, 17, 16, 28, 12])
    batches = [rng.permutation(30)[:11].tolist() for _ in range(24)]
    reference = [_by_np_load(r, source.task) for r in records]  # decoded here, not in the reading threads
    failures: list[BaseException] = []

    def read(part: list[list[int]]) -> None:
        try:
            for indexes in part:
                _assert_batch(source, records, indexes, reference)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=read, args=(batches[k::3],)) for k in range(3)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two calls, e.g. between a seek and its read
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not failures, failures[0]


def test_array_record_bad_records_name_the_files(tmp_path: Path) -> None:
    records = [_npz(x=np.zeros(3, np.float32), y=np.int64(0)), _npz(x=np.zeros(4, np.float32), y=np.int64(1)),
               b"not an npz", _npz(x=np.zeros(3, np.float32), label=np.int64(1))]
    path = _write(tmp_path / "bad.array_record", records)
    source = sources.ArrayRecordSource([path], "x", "y", "classification")
    with pytest.raises(sources.RecordError, match=f"{path}: records of one batch differ in shape"):
        source.read_batch([0, 1])
    with pytest.raises(sources.RecordError, match=f"record 2 of {path}: not an .npz with arrays 'x' and 'y'"):
        source.read_batch([0, 2])
    with pytest.raises(sources.RecordError, match=f"record 3 of {path}: not an .npz"):
        source.read_batch([3])
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(sources.RecordError, match=f"{tmp_path / 'plain.txt'}: not an ArrayRecord file"):
        sources.ArrayRecordSource([str(tmp_path / "plain.txt")], "x", "y", "classification")


# --- the read-ahead -------------------------------------------------------------------------------------


class _Numbers:
    """Record i = (inputs [i, i], label i % 3); `bad` records raise the error a broken file gives."""

    def __init__(self, n: int, bad: frozenset[int] = frozenset()):
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if int(index) in self.bad:
            raise sources.RecordError(f"/data/img{int(index)}.png: cannot decode the image (broken)")
        return np.full(2, float(index), np.float32), np.int32(int(index) % 3)


def _dataset(source: _Numbers) -> streaming.StreamingDataset:
    prep = Preprocessing("none", None, None, [2], "classification", 3, 3)
    split = lambda a: streaming.StreamSplit(np.asarray(a, np.int64))  # noqa: E731
    return streaming.StreamingDataset(source, split(range(len(source))), split([]), split([]), prep, seed=0,
                                      workers=0, prefetch=2)


def test_read_ahead_hands_out_the_batches_and_states_of_a_feed_that_reads_nothing_ahead() -> None:
    ds = _dataset(_Numbers(30))
    plain, ahead = streaming.Feed(ds, 4, seed=7, ahead=0), streaming.Feed(ds, 4, seed=7, ahead=3)
    placed = []
    ahead.place = lambda x, y: placed.append(len(x)) or (x + 0.5, y)  # runs in the read-ahead thread
    states = []
    for _ in range(17):  # 7 batches per epoch: into the third epoch
        (xa, ya), (xb, yb) = plain.next(), ahead.next()
        assert np.array_equal(xa + 0.5, xb) and np.array_equal(ya, yb)
        assert plain.state() == ahead.state()
        states.append(ahead.state())
    assert len(placed) >= 17
    plain.close()
    ahead.close()
    again = streaming.Feed(ds, 4, seed=7, ahead=2)
    again.restore(states[9])  # what a checkpoint after batch 10 keeps
    rest = [again.next()[0] for _ in range(7)]
    again.close()
    check = streaming.Feed(ds, 4, seed=7, ahead=0)
    reference = [check.next()[0] for _ in range(17)][10:]
    check.close()
    for a, b in zip(rest, reference, strict=True):
        assert np.array_equal(a, b)


def test_read_ahead_raises_a_record_error_in_the_training_thread_and_close_stops_it() -> None:
    ds = _dataset(_Numbers(12, bad=frozenset(range(12))))
    feed = streaming.Feed(ds, 4, seed=0)
    with pytest.raises(GitopsError, match=r"/data/img\d+\.png: cannot decode the image"):
        feed.next()
    feed.close()

    feed = streaming.Feed(_dataset(_Numbers(40)), 4, seed=0, ahead=1)
    feed.next()
    thread = feed._thread
    assert thread is not None and thread.is_alive()  # waiting for room in its full queue
    feed.close()
    assert not thread.is_alive()
    assert threading.active_count() >= 1


# --- the order: Grain's global shuffle and per-process shards, a batch at a time ---------------------------


def test_index_shuffle_is_grain_index_shuffle_for_whole_arrays() -> None:
    from grain.experimental import index_shuffle as grain_index_shuffle

    from gitops.learn.index_shuffle import index_shuffle

    rng = np.random.default_rng(0)
    # small blocks (the table path), block edges, a power of two (where Grain's block is one bit short), large
    for n in (1, 2, 5, 1000, 65536, 65537, 131073, 1 << 20, (1 << 20) + 3, 5_000_011):
        for seed in (0, 7, 2**32 - 1):
            idx = np.arange(n) if n <= 1000 else rng.integers(0, n, 300)
            want = [grain_index_shuffle(int(i), max_index=n - 1, seed=seed, rounds=4) for i in idx]
            assert index_shuffle(idx, n - 1, seed).tolist() == want, (n, seed)
    assert sorted(index_shuffle(np.arange(1000), 999, 3).tolist()) == list(range(1000))


@pytest.mark.parametrize(("n", "batch", "processes"), [(30, 4, 1), (61, 6, 2), (40, 8, 4)])
def test_batches_follow_grain_shuffle_and_process_shards_over_epochs(n: int, batch: int, processes: int) -> None:
    import grain

    kept = (n // batch) * batch
    for index in range(processes):
        reference = grain.MapDataset.range(n).shuffle(seed=11)[:kept][index::processes]
        reference = reference.batch(batch // processes, drop_remainder=True).repeat(None)
        positions = streaming.ShuffledBatch(n, 11, kept, batch // processes, index, processes)
        for b in range(3 * (n // batch) + 1):  # three epochs and one more batch
            assert positions(b).tolist() == np.asarray(reference[b]).tolist(), (index, b)


@pytest.mark.parametrize(("n", "batch", "processes"), [(30, 8, 1), (33, 8, 4)])
def test_remainder_pad_batches_carry_weights_through_the_batch_first_feed(n: int, batch: int, processes: int) -> None:
    """`remainder: pad` on the batch-first path (ShuffledBatch -> ReadBatch -> Feed read-ahead -> place): each
    epoch every record once over all processes' shares, weight-0 zero rows only after them (with 4 processes a
    process's whole share of the last batch can be padding), the first batches those of `drop`."""
    drop, pad = _dataset(_Numbers(n)), _dataset(_Numbers(n))
    pad.remainder = "pad"
    steps = -(-n // batch)
    placed: list[int] = []

    def place(*arrays):  # what training's place_batch gets: the weights travel with x and y
        placed.append(len(arrays))
        return arrays

    shares = []
    for index in range(processes):
        feed = streaming.Feed(pad, batch, seed=5, process_index=index, process_count=processes, place=place, ahead=2)
        plain = streaming.Feed(drop, batch, seed=5, process_index=index, process_count=processes, ahead=0)
        got = [feed.next() for _ in range(2 * steps)]
        dropped = [plain.next() for _ in range(2 * (n // batch))]
        feed.close()
        plain.close()
        assert all(len(b) == 3 and b[2].dtype == np.float32 and len(b[2]) == batch // processes for b in got)
        for epoch in range(2):
            for d, p in zip(dropped[epoch * (n // batch):(epoch + 1) * (n // batch)], got[epoch * steps:], strict=False):
                assert np.array_equal(d[0], p[0]) and np.array_equal(d[1], p[1]) and p[2].tolist() == [1.0] * len(p[2])
        shares.append(got)
    assert set(placed) == {3}
    for epoch in range(2):
        rows = [(x, w) for got in shares for b in got[epoch * steps:(epoch + 1) * steps] for x, w in zip(b[0], b[2], strict=True)]
        real = sorted(int(x[0]) for x, w in rows if w == 1.0)
        assert real == list(range(n))  # every record once
        padding = [x for x, w in rows if w == 0.0]
        assert len(padding) == steps * batch - n and all(not x.any() for x in padding)
    # a resume mid-stream (Grain's state after batch 5) continues the padded stream exactly
    feed = streaming.Feed(pad, batch, seed=5, process_count=processes, ahead=2)
    [feed.next() for _ in range(5)]
    state = feed.state()
    feed.close()
    again = streaming.Feed(pad, batch, seed=5, process_count=processes, ahead=2)
    again.restore(state)
    nxt = again.next()
    again.close()
    assert all(np.array_equal(a, b) for a, b in zip(nxt, shares[0][5], strict=True))
