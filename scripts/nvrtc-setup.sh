#!/usr/bin/env bash
# Installs NVRTC and the CUDA headers from PyPI wheels so that kernels can be
# compiled (not run) on a machine without a GPU or a CUDA toolkit: CI and dev boxes.
#
#   bash scripts/nvrtc-setup.sh            # installs into .nvrtc/ (gitignored)
#   eval "$(bash scripts/nvrtc-setup.sh --env)"   # same, then exports the variables
#
# cudarc's loader looks for `libnvrtc.so` but the wheel ships `libnvrtc.so.13`, hence
# the symlink in .nvrtc/lib.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${NVRTC_DIR:-$root/.nvrtc}"
py="${PYTHON:-python3}"

if [ ! -d "$dest/site/nvidia" ]; then
    mkdir -p "$dest/site"
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$dest/site" 'nvidia-cuda-nvrtc==13.0.*' 'nvidia-cuda-runtime==13.0.*' >&2
fi

so="$(find "$dest/site/nvidia" -name 'libnvrtc.so.13*' -print | sort | head -n 1)"
inc="$(find "$dest/site/nvidia" -type f -name cuda_fp16.h -print | head -n 1)"
if [ -z "$so" ] || [ -z "$inc" ]; then
    echo "nvrtc-setup: libnvrtc.so.13 or cuda_fp16.h missing under $dest/site" >&2
    exit 1
fi
libdir="$(dirname "$so")"
incdir="$(dirname "$inc")"
mkdir -p "$dest/lib"
ln -sf "$so" "$dest/lib/libnvrtc.so"
# NVRTC loads its builtins library from beside itself; keep those reachable too.
for f in "$libdir"/libnvrtc-builtins.so*; do
    [ -e "$f" ] && ln -sf "$f" "$dest/lib/$(basename "$f")"
done

if [ "${1:-}" = "--env" ]; then
    echo "export LD_LIBRARY_PATH=\"$dest/lib:$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
    echo "export DGATE_CUDA_INCLUDE=\"$incdir\""
else
    echo "LD_LIBRARY_PATH=$dest/lib:$libdir"
    echo "DGATE_CUDA_INCLUDE=$incdir"
fi
