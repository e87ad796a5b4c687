#!/usr/bin/env bash
# CUDA check on a lent GPU machine (the device tool): cnn and resnet8 training steps on ONNX
# Runtime's CUDA execution provider beside PyTorch eager on the same GPU.
# Expects, in $PACK (default /tmp/g), pack.tar holding: onnxsam.xz (a release build), ort.so.xz
# (libonnxruntime.so.1.31.1 of the onnxruntime-gpu 1.31.1 wheel), libonnxruntime_providers_shared.so
# and cuda.so.xz (libonnxruntime_providers_cuda.so) — over 64 MiB, so it travels in parts
# (split -b 50M) over several calls and is joined here. The machine's own python3 holds PyTorch
# and the CUDA 13 libraries (nvidia-* wheels) that the CUDA provider loads.
set -euo pipefail
PACK=${PACK:-/tmp/g}
cd "$(dirname "$0")/../.."
if [ ! -f "$PACK/pack.tar" ]; then cat "$PACK"/part.* > "$PACK/pack.tar"; fi
mkdir -p "$PACK/lib" target/release
tar xf "$PACK/pack.tar" -C "$PACK"
xz -dc "$PACK/cuda.so.xz" > "$PACK/lib/libonnxruntime_providers_cuda.so"
xz -dc "$PACK/ort.so.xz" > "$PACK/lib/libonnxruntime.so.1.31.1"
cp "$PACK/libonnxruntime_providers_shared.so" "$PACK/lib/"
xz -dc "$PACK/onnxsam.xz" > target/release/onnxsam && chmod +x target/release/onnxsam
SP=$(python3 -c 'import site; print(site.getsitepackages()[0])')
NV=$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="$PACK/lib:$NV${LD_LIBRARY_PATH:-}"
export ORT_DYLIB_PATH="$PACK/lib/libonnxruntime.so.1.31.1"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
target/release/onnxsam inspect --backends
PYTHONUNBUFFERED=1 python3 tools/bench/train_vs_torch.py --models cnn resnet8 --device cuda --engines ort --steps 20 --threads 16
