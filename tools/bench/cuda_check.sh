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

# --- issue 17: SAM at scale on the GPU -------------------------------------------------------
# ResNet-18 and WRN-16-4 (and WRN-28-10) at batch 128, ONNX Runtime's CUDA provider beside PyTorch
# eager on the same GPU (PyTorch: torch.cuda.max_memory_allocated; onnxsam: the process's device
# memory, sampled with nvidia-smi while it runs). Then the CUDA provider's settings that matter,
# one SAM run each: cuDNN's algorithm search, max workspace, TF32 (PyTorch's default for
# convolutions), NHWC. (CUDA graphs need inputs bound at fixed addresses; onnxsam binds each
# step's outputs to fresh buffers, so enable_cuda_graph is not tried.)
gpu_mem_watch() {  # prints the largest used_memory (MiB) of any compute process until killed
  local peak=0
  while true; do
    m=$(nvidia-smi --query-compute-apps=used_memory --format=csv,noheader,nounits 2>/dev/null | sort -n | tail -1)
    [ -n "$m" ] && [ "$m" -gt "$peak" ] && peak=$m && echo "$peak" > /tmp/gpu_peak
    sleep 0.2
  done
}
PYTHONUNBUFFERED=1 python3 tools/bench/scale_vs_torch.py --models resnet18 wrn16_4 wrn28_10 --batch 128 \
  --device cuda --engine ort --threads 16 --steps 10 --rounds 2 --optimizers sgd sam rw-sam msam16 || true
for opts in "" "cudnn_conv_algo_search=HEURISTIC" "cudnn_conv_algo_search=EXHAUSTIVE" \
            "cudnn_conv_use_max_workspace=1" "use_tf32=1" "use_tf32=0" "prefer_nhwc=1" \
            "cudnn_conv_algo_search=EXHAUSTIVE,use_tf32=1,prefer_nhwc=1"; do
  echo 0 > /tmp/gpu_peak
  gpu_mem_watch & W=$!
  out=$(ONNXSAM_CUDA_OPTIONS="$opts" target/release/onnxsam bench /tmp/onnxsam-scale/resnet18.onnx \
        --batch-size 128 --optimizer sam --consecutive --steps 10 --backend ort --device cuda --json 2>&1 | tail -1)
  kill $W 2>/dev/null || true
  echo "options [${opts:-default}] $(echo "$out" | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print(" ".join(f"{t[\"name\"]} {t[\"median_ms\"]:.1f} ms" for t in r["optimizers"]))' 2>/dev/null || echo "$out") device peak $(cat /tmp/gpu_peak) MiB"
done
