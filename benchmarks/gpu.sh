#!/usr/bin/env bash
# The CUDA checks and measurements in one go, for a machine with an NVIDIA GPU (about 4-6 minutes):
#   1. the CUDA tests (tests/test_cuda.py: graph vs eager, batched vs single runs, determinism)
#   2. mnistlab bench --device cuda for the seed and the fast recipes
#   3. mnistlab bench --sweep --device cuda (K = 1, 8, 64, 512 networks batched vs one after another)
#   4. a 1-GPU torchrun run of mnistlab train (DDP with NCCL)
#   5. mnistlab ladder --device cuda, both tracks, one seed (the GPU column of docs/recipes.md)
# then one table with the card, the driver and the torch version, for the README.
#
# Usage: benchmarks/gpu.sh [MNIST_DIR]
#   MNIST_DIR: the folder of MNIST's four IDX files (default: ../shared/data/mnist beside the
#   repository if it is there, else the usual places, which may download it).
# Exits non-zero, loudly, without a CUDA GPU or when any step fails; every step's output is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

fail() { echo "benchmarks/gpu.sh: $*" >&2; exit 1; }

python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || fail "no CUDA GPU visible to PyTorch ($(python -c 'import torch; print("torch", torch.__version__, "CUDA build:", torch.version.cuda)' 2>&1)); run it on a machine with an NVIDIA GPU and a CUDA build of torch"
command -v nvidia-smi > /dev/null || fail "nvidia-smi not found: the NVIDIA driver is not installed"

DATA_DIR=${1:-}
if [ -z "$DATA_DIR" ] && [ -f ../shared/data/mnist/train-images-idx3-ubyte.gz ]; then
  DATA_DIR=../shared/data/mnist
fi
DATA=()
if [ -n "$DATA_DIR" ]; then DATA=(--data-dir "$DATA_DIR"); fi
OUT=$(mktemp -d "${TMPDIR:-/tmp}/mnistlab-gpu.XXXXXX")
echo "gpu.sh: every step's output is kept in $OUT" >&2

step() {  # step NAME COMMAND...: run it, keep stdout and stderr, note its status and seconds
  local name=$1 status t0=$SECONDS
  shift
  echo "== $name: $*" >&2
  if "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"; then status=ok; else status="FAILED (exit $?)"; fi
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" >> "$OUT/steps.tsv"
  if [ "$status" != ok ]; then
    echo "gpu.sh: $name failed; the end of its stderr:" >&2
    tail -n 20 "$OUT/$name.err" >&2
  fi
}

step cuda-tests python -m pytest -q -p no:cacheprovider -m "slow or not slow" tests/test_cuda.py
step bench-seed python -m mnistlab bench --device cuda --recipe seed --repeats 2 "${DATA[@]}" --json
step bench-fast python -m mnistlab bench --device cuda --recipe fast --repeats 1 "${DATA[@]}" --json
step bench-sweep python -m mnistlab bench --sweep --device cuda "${DATA[@]}" --json
step torchrun-1gpu python -m torch.distributed.run --standalone --nproc-per-node 1 \
  -m mnistlab train --recipe fast --device cuda --out "$OUT/ddp-1gpu" --no-plots --json "${DATA[@]}"
step ladder-mlp python -m mnistlab ladder --track mlp --seeds 1 --device cuda --out "$OUT/ladder-mlp" --json "${DATA[@]}"
step ladder-cnn python -m mnistlab ladder --track cnn --seeds 1 --device cuda --out "$OUT/ladder-cnn" --json "${DATA[@]}"

python - "$OUT" << 'EOF'
import json, subprocess, sys
from pathlib import Path

import torch

out = Path(sys.argv[1])
card, driver = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader", "-i", "0"],
                              capture_output=True, text=True).stdout.strip().split(", ")[:2]
print(f"card {card}, driver {driver}, torch {torch.__version__} (CUDA {torch.version.cuda})")


def load(name):
    try:
        return json.loads((out / f"{name}.out").read_text())
    except (OSError, ValueError):
        return None


def result(name):
    doc = load(name)
    if name == "cuda-tests":
        lines = (out / f"{name}.out").read_text().strip().splitlines()
        return lines[-1] if lines else ""
    if doc is None:
        return "-"
    if name.startswith("ladder-"):
        return "  ".join(f"{r['step']}: {100 * r['test_accuracy_mean']:.2f}% {r['train_seconds_median']:.2f} s"
                         for r in doc["rows"] if r["test_accuracy_mean"] is not None)
    if name.startswith("bench-sweep"):
        return "  ".join(f"K={r['networks']}: {r['batched_networks_per_second']:.1f} nets/s, {r['ratio']:.1f}x"
                         for r in doc["rows"])
    if name.startswith("bench-"):
        ours = doc["ours"]
        text = (f"notebook {doc['notebook']['seconds_per_epoch']['median']:.2f} s/epoch, ours "
                f"{ours['seconds_per_epoch']['median']:.3f} s/epoch ({doc['speedup']:.1f}x), test {100 * ours['test_accuracy']:.2f}%")
        if ours.get("time_to_target"):
            text += f", 98% after {ours['time_to_target']['median']:.2f} s"
        return text
    return (f"world_size {doc['world_size']}, {doc['epochs']} epochs in {doc['train_seconds']:.2f} s, "
            f"test {100 * doc['test_accuracy']:.2f}%")


rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
width = max(len(r[0]) for r in rows)
print(f"{'step':<{width}}  {'status':<16} {'seconds':>7}  result")
for name, status, seconds in rows:
    print(f"{name:<{width}}  {status:<16} {seconds:>7}  {result(name)}")
total = sum(int(r[2]) for r in rows)
print(f"total {total} s" + ("  (over the six minutes this script should take)" if total > 360 else ""))
sys.exit(0 if all(r[1] == "ok" for r in rows) else 1)
EOF
