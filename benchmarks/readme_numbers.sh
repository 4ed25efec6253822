#!/usr/bin/env bash
# The commands behind the README's tables. Run on a quiet machine:
#   bash benchmarks/readme_numbers.sh path/to/mnist OUTDIR
set -euo pipefail
data=${1:?usage: readme_numbers.sh MNIST_DIR OUTDIR}
out=${2:?usage: readme_numbers.sh MNIST_DIR OUTDIR}
mkdir -p "$out"
for r in seed default fast cnn; do
    mnistlab train --recipe "$r" --data-dir "$data" --out "$out/$r" --no-plots | grep -E '^(device|epoch|test accuracy)'
done
mnistlab bench --recipe seed --device cpu --epochs 5 --repeats 2 --data-dir "$data"
mnistlab bench --recipe fast --device cpu --repeats 1 --data-dir "$data"
