#!/usr/bin/env bash
# Reproduces docs/results.md: hinge and cross-entropy gates after stages 1 and 2 of the
# pretrained ResNet-20 and ResNet-56, trained on the 50,000 CIFAR-10 training images;
# sweeps on the 10,000 test images; thresholds calibrated on test images 0..5000 and
# reported on 5000..10000. Outputs go to ${OUTDIR:-target/results}.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DGATE_DATA:-../shared/data}
OUT=${OUTDIR:-target/results}
BIN=target/release/dgate-rt
mkdir -p "$OUT"
cargo build --release -q
for net in resnet20 resnet56; do
  for loss in hinge ce; do
    /usr/bin/time -f "train-gates $net $loss: %e s wall" \
      $BIN train-gates --weights "$DATA/weights/$net.safetensors" --loss $loss --out "$OUT/$net-$loss.safetensors" \
      | tee "$OUT/$net-$loss.train.txt"
  done
  $BIN sweep --weights "$OUT/$net-hinge.safetensors" "$OUT/$net-ce.safetensors" \
    --csv "$OUT/$net-sweep.csv" --plot "$OUT/$net-sweep.svg" | tee "$OUT/$net-sweep.txt"
  for loss in hinge ce; do
    for drop in 0.5 1.0; do
      $BIN calibrate --weights "$OUT/$net-$loss.safetensors" --max-drop $drop \
        --out "$OUT/$net-$loss-drop$drop.safetensors" | tee "$OUT/$net-$loss-calibrate-$drop.txt"
    done
  done
done
