"""Make the data files of the streaming examples (run once; the outputs are committed).

    python examples/make_example_data.py shapes   # models/shapes-cnn/images/<split>/<class>/<n>.png
    python examples/make_example_data.py tabular  # models/tabular-mlp/table/part-0.parquet

then `gitops data checksums <folder> --out <list>` writes each checksum list and prints the pin.
The files are committed rather than made at test time, since PNG and Parquet bytes differ between
Pillow and pyarrow versions (and the checksum list pins the bytes).
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHAPES = ("circle", "cross", "square", "triangle")
SPLITS = {"train": 600, "val": 100, "test": 100}  # per class: 3,200 images in all
SIDE = 20


def _shape(draw, kind: str, rng: np.random.Generator) -> None:
    r = rng.uniform(4.0, 8.0)
    cx, cy = rng.uniform(r + 1, SIDE - r - 1, size=2)
    width = int(rng.integers(1, 3))
    ink = int(rng.integers(170, 256))
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=ink, width=width)
    elif kind == "square":
        angle = rng.uniform(0, math.pi / 2)
        pts = [(cx + r * math.cos(angle + k * math.pi / 2), cy + r * math.sin(angle + k * math.pi / 2)) for k in range(4)]
        draw.polygon(pts, outline=ink, width=width)
    elif kind == "triangle":
        angle = rng.uniform(0, 2 * math.pi)
        pts = [(cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
        draw.polygon(pts, outline=ink, width=width)
    else:
        angle = rng.uniform(0, math.pi / 2)
        for k in range(2):
            a = angle + k * math.pi / 2
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=ink, width=width)


def shapes(out: Path) -> None:
    from PIL import Image, ImageDraw

    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(2026)
    for split, count in SPLITS.items():
        for kind in SHAPES:
            folder = out / split / kind
            folder.mkdir(parents=True)
            for n in range(count):
                img = Image.new("L", (SIDE, SIDE), 0)
                _shape(ImageDraw.Draw(img), kind, rng)
                pixels = np.asarray(img, np.int16) + rng.integers(0, 24, size=(SIDE, SIDE))  # faint noise
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{n:04d}.png", optimize=True)


def tabular(out: Path) -> None:
    """20,000 rows: 16 float features, a 3-class label that depends on them nonlinearly, row groups of 2,000."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(7)
    n, f = 20_000, 16
    x = rng.normal(size=(n, f)).astype(np.float32)
    score = np.stack([x[:, 0] * x[:, 1] + x[:, 2], np.sin(2 * x[:, 3]) + x[:, 4] ** 2 - 1, x[:, 5] - x[:, 6] * 0.5], 1)
    label = np.argmax(score + 0.3 * rng.normal(size=score.shape), axis=1).astype(np.int64)
    columns = {f"f{i:02d}": x[:, i] for i in range(f)}
    columns["label"] = label
    pq.write_table(pa.table(columns), out / "part-0.parquet", row_group_size=2_000, compression="zstd")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "shapes":
        shapes(REPO / "models" / "shapes-cnn" / "images")
    elif what == "tabular":
        tabular(REPO / "models" / "tabular-mlp" / "table")
    else:
        sys.exit("usage: make_example_data.py shapes|tabular")
