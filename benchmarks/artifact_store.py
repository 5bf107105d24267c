"""Artifact-store throughput against a plain fsspec copy of the same bytes (issue 24; goal: ratio >= 0.8).

Starts moto's S3-compatible server on 127.0.0.1 (pip install 'moto[server]' s3fs), writes a file of random
bytes, and times, on the same server in the same run:

- upload:   `artifact_store.publish_archive` (existence check, streamed multipart upload, size read-back,
            SHA256SUMS and the objects list; the archive's sha256 is known from packaging, as in a release)
            vs `fs.put_file` (fsspec's own upload of the file);
- upload in parts: the same with `part_size_mb` (several objects) vs the same `fs.put_file`;
- download: `ArtifactStore.fetch` (streamed, hashed, verified, into the hash-keyed cache)
            vs `fs.get_file`.

Each is the best of `--repeat` runs, ours and the reference interleaved; the store's uploads go to a fresh prefix each time (no skip).
Prints MiB/s and the ratios. Usage: python benchmarks/artifact_store.py [--mb 256] [--repeat 3] [--file]
(`--file` measures a file:// store against a folder instead of S3).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gitops.checksums import sha256_file  # noqa: E402
from gitops.registry import artifact_store  # noqa: E402


def _best_pair(ref, ours, repeat: int) -> tuple[float, float]:
    """Best times of `ref(i)` and `ours(i)`, run interleaved (ref, ours, ref, ...) so drift hits both."""
    best = [float("inf"), float("inf")]
    for i in range(repeat):
        for k, fn in enumerate((ref, ours)):
            start = time.perf_counter()
            fn(i)
            best[k] = min(best[k], time.perf_counter() - start)
    return best[0], best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="size of the file in MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--block-mb", type=int, default=64, help="multipart block size (both sides)")
    parser.add_argument("--part-mb", type=int, default=64, help="part size of the split upload (part_size_mb)")
    parser.add_argument("--file", action="store_true", help="a file:// store instead of a local S3 server")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gitops-bench-store-"))
    server = None
    try:
        src = work / "archive.bin"
        with open(src, "wb") as fh:
            for _ in range(args.mb):
                fh.write(os.urandom(1024**2))
        size = src.stat().st_size
        sha = sha256_file(src)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
        if args.file:
            base = f"file://{work / 'store'}"
            endpoint = None
        else:
            from moto.server import ThreadedMotoServer

            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
            os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            endpoint = f"http://127.0.0.1:{port}"
            import boto3

            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
            base = "s3://bench"

        def store(prefix: str) -> artifact_store.ArtifactStore:
            return artifact_store.ArtifactStore(artifact_store.StoreSettings(
                url=f"{base}/{prefix}", endpoint_url=endpoint, block_size_mb=args.block_mb))

        plain = store("plain")
        fs = plain.fs
        if args.file:
            fs.makedirs(f"{plain._root}/ref", exist_ok=True)

        chunk = {} if args.file else {"chunksize": args.block_mb * 1024**2}

        def ref_up(i: int) -> None:
            fs.put_file(str(src), f"{plain._root}/ref/{i}", **chunk)

        def ours_up(i: int) -> None:  # what a release does after packaging (which hashed the archive)
            out = work / f"assets-{i}"
            out.mkdir()
            artifact_store.publish_archive(store(f"ours{i}"), src, out, sha)

        def ours_parts(i: int) -> None:  # part_size_mb: the archive as several objects
            out = work / f"parts-{i}"
            out.mkdir()
            artifact_store.publish_archive(artifact_store.ArtifactStore(artifact_store.StoreSettings(
                url=f"{base}/parts{i}", endpoint_url=endpoint, block_size_mb=args.block_mb,
                part_size_mb=args.part_mb)), src, out, sha)

        ref_up_s, ours_up_s = _best_pair(ref_up, ours_up, args.repeat)
        _, ours_parts_s = _best_pair(lambda i: None, ours_parts, args.repeat)
        target = store("ours0")
        obj = artifact_store.StoredObject(src.name, sha, size, target.object_url(sha))

        def ref_down(i: int) -> None:
            out = work / f"ref-down-{i}"
            fs.get_file(f"{plain._root}/ref/0", str(out))
            out.unlink()

        def ours_down(i: int) -> None:
            cache = work / f"cache-{i}"
            target.fetch(obj, cache=cache)
            shutil.rmtree(cache)

        ref_down_s, ours_down_s = _best_pair(ref_down, ours_down, args.repeat)
        mib = size / 1024**2
        kind = "file:// folder" if args.file else f"S3 (moto on {endpoint})"
        print(f"artifact store vs plain fsspec copy, {mib:.0f} MiB random bytes, {kind}, best of {args.repeat}")
        print(f"  upload:   store {mib / ours_up_s:8.1f} MiB/s   fsspec put_file {mib / ref_up_s:8.1f} MiB/s   "
              f"ratio {ref_up_s / ours_up_s:.2f} (goal >= 0.8)")
        print(f"  upload in {args.part_mb} MiB parts: store {mib / ours_parts_s:8.1f} MiB/s   "
              f"ratio {ref_up_s / ours_parts_s:.2f} against the same fsspec put_file (goal >= 0.8)")
        print(f"  download: store {mib / ours_down_s:8.1f} MiB/s   fsspec get_file {mib / ref_down_s:8.1f} MiB/s   "
              f"ratio {ref_down_s / ours_down_s:.2f} (goal >= 0.8)")
        print("  (the store also hashes every byte, checks existence and reads the size back; fsspec does not)")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
