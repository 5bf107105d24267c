"""How fast `gitops validate` is on a repository of many models, beside check-jsonschema.

Generates N model folders (copies of the examples with varied values) in a temp folder, then times
`gitops validate` and `check-jsonschema` (schema checks only, one call per file kind, on the same
files) as subprocesses, best of R runs each, and prints both and their ratio. `gitops validate`
does more (extends, defaults, semantic checks, fingerprints); the ratio shows what that costs.

    python benchmarks/validate_scale.py [--models 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def generate(root: Path, count: int) -> None:
    shutil.copytree(REPO / "schemas", root / "schemas")
    examples = [p for p in sorted((REPO / "models").iterdir()) if p.is_dir() and p.name != "digits-mlp-wide"]
    for i in range(count):
        source = examples[i % len(examples)]
        target = root / "models" / f"{source.name}-{i:05d}"
        target.mkdir(parents=True)
        for file in source.glob("*.yaml"):
            text = file.read_text()
            if file.name == "train.yaml":
                text = text.replace("seed: 0", f"seed: {i}")
            target.joinpath(file.name).write_text(text)


def best_time(cmd: list[str], cwd: Path, repeats: int) -> tuple[float, int]:
    best, code = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
        best = min(best, time.perf_counter() - start)
        code = proc.returncode
        if code not in (0,):
            sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
    return best, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root, args.models)
        ours, code = best_time([str(bindir / "gitops"), "validate"], root, args.repeats)
        print(f"gitops validate       {args.models} models: {ours:7.3f} s (exit {code})")
        check = shutil.which("check-jsonschema", path=str(bindir)) or shutil.which("check-jsonschema")
        if not check:
            print("check-jsonschema not installed (pip install check-jsonschema); no ratio")
            return
        total = 0.0
        for kind in ("model", "train", "data", "release"):
            files = sorted(str(p) for p in root.glob(f"models/*/{kind}.yaml"))
            seconds, code = best_time([check, "--schemafile", str(root / "schemas" / f"{kind}.schema.json"), *files],
                                      root, args.repeats)
            total += seconds
        print(f"check-jsonschema      {args.models} models: {total:7.3f} s (4 calls, schema checks only)")
        print(f"ratio gitops/check-jsonschema: {ours / total:.2f}")


if __name__ == "__main__":
    main()
