#!/usr/bin/env bash
# Copies what a device call needs into .gpudata/ (ignored by git, named in the call's carry).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DGATE_DATA:-../shared/data}
mkdir -p .gpudata/cifar10 .gpudata/weights
cp "$DATA/cifar10/test_batch.bin" .gpudata/cifar10/
cp "$DATA/weights/resnet56.safetensors" .gpudata/weights/
grep -qx '/.gpudata/' .gitignore || echo '/.gpudata/' >> .gitignore
du -sh .gpudata target/release/dgate-rt
