#!/usr/bin/env bash
# GPU correctness check and a short latency table, for the borrowed GPU machine (no
# Rust toolchain there: build `cargo build --release` here and carry the binary).
#
#   bash scripts/gpu-check.sh          # from the repository root
#
# Expects target/release/dgate-rt (or $DGATE_BIN) and the data in .gpudata/
# (test_batch.bin, resnet56.safetensors). Everything goes to $OUT/gpu-check.log.
# Bounded to well under 4 minutes.
set -uo pipefail

OUT="${OUT:-target/gpu-check}"
mkdir -p "$OUT"
log="$OUT/gpu-check.log"
bin="${DGATE_BIN:-target/release/dgate-rt}"
export DGATE_DATA="${DGATE_DATA:-$PWD/.gpudata}"

{
    echo "== $(date -u +%FT%TZ) gpu-check on $(hostname)"
    echo "== nvidia-smi -L"
    nvidia-smi -L || echo "nvidia-smi failed"
    echo "== $bin gpu-check"
    if [ ! -x "$bin" ]; then
        echo "missing $bin: build it with cargo build --release and carry it"
        exit 2
    fi
    start=$(date +%s)
    timeout 210 "$bin" gpu-check
    rc=$?
    echo "== exit status $rc after $(( $(date +%s) - start )) s"
    exit $rc
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
