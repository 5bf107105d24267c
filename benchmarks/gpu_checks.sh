#!/usr/bin/env bash
# The checks that need a GPU, as one short script for a lent device machine (see README, Benchmarks).
# Writes its figures and a GPU-trained run folder under $OUT (default ./gpu-out):
#   lm_step.txt        benchmarks/lm_step.py at the size that fills one GPU (MFU, ratio, KV-cache speed-up)
#   train_overhead.txt benchmarks/train_overhead.py --quick on the GPU
#   gpu_run.tgz        digits-mlp trained on the GPU: its checkpoint must restore on a CPU-only machine
#   sharding.txt       what the checkpoint's sharding metadata says about devices
# Wheels for packages the device image lacks may be put in .whl/ (installed into /tmp/site first).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache
nvidia-smi -L | tee "$OUT/device.txt"
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print(jax.__version__, flax.__version__, optax.__version__, o.__version__, jax.devices())" | tee -a "$OUT/device.txt"
timeout 300 python3 -m gitops.cli train digits-mlp --out /tmp/gpuruns 2>&1 | tail -5 | tee "$OUT/train.txt"
run=$(ls -d /tmp/gpuruns/digits-mlp/*/ | head -1)
grep -rhoa '"device[^}]*' "$run/checkpoints" 2>/dev/null | sort | uniq -c | head -20 > "$OUT/sharding.txt"
grep -rla 'cuda' "$run/checkpoints" >> "$OUT/sharding.txt" 2>/dev/null || echo "no file in checkpoints/ names a cuda device" >> "$OUT/sharding.txt"
tar czf "$OUT/gpu_run.tgz" -C "$(dirname "$run")" "$(basename "$run")"
timeout 360 python3 benchmarks/lm_step.py --size gpu 2>&1 | tail -12 | tee "$OUT/lm_step.txt"
timeout 120 python3 benchmarks/train_overhead.py --quick 2>&1 | tail -8 | tee "$OUT/train_overhead.txt"
