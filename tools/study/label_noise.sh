#!/usr/bin/env bash
# The label-noise study of docs/results.md: Fashion-MNIST with 40% symmetric label noise (the same
# noisy labels for every optimizer and seed: --label-noise-seed 100), each optimizer over the seeds.
#
#   tools/study/label_noise.sh MODEL EPOCHS "SEEDS" [THREADS]     e.g.  tools/study/label_noise.sh mlp 30 "0 1 2" 1
#
# Runs go to runs/study/<model>-<optimizer>-s<seed> (a finished run is skipped); summarize with
# tools/study/summarize.py runs/study. Hyperparameters are fixed in advance (the SAM literature's and
# each paper's defaults; nothing was chosen on the test set): SGD lr 0.05 with a cosine schedule,
# momentum 0.9, batch 128, ρ = 0.05; RW-SAM Q = 1, δ = 3e-3, mean-normalized scores.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=$1 epochs=$2 seeds=$3 threads=${4:-2}
bin=${ONNXSAM:-target/release/onnxsam}
mkdir -p runs/study
[ -d data/fashion-mnist ] || tools/fetch-data.sh fashion-mnist
declare -A opts=(
  [sgd]="--optimizer sgd"
  [sam]="--optimizer sam"
  [rwsam]="--optimizer sam --reweight 1"
  [rwsam-auto50]="--optimizer sam --reweight auto --target-ess 0.5"
  [rwsam-auto25]="--optimizer sam --reweight auto --target-ess 0.25"
  [msam16]="--optimizer sam --micro-batch 16"
  [msam4]="--optimizer sam --micro-batch 4"
  [gsam]="--optimizer gsam --rho-schedule lr"
)
order="sgd sam rwsam rwsam-auto50 rwsam-auto25 gsam msam16 msam4"
for seed in $seeds; do
  for o in $order; do
    out=runs/study/$model-$o-s$seed
    [ -f "$out/model.onnx" ] && continue
    rm -rf "$out"
    echo "== $model $o seed $seed"
    # shellcheck disable=SC2086
    "$bin" train models/$model.onnx --data data/fashion-mnist --label-noise 0.4 --label-noise-seed 100 \
      --seed "$seed" ${opts[$o]} --rho 0.05 --lr 0.05 --lr-schedule cosine --momentum 0.9 \
      --batch-size 128 --epochs "$epochs" --trace-v 1024 --backend ort --threads "$threads" \
      --out "$out" > "$out.log" 2>&1 || { echo "failed: see $out.log"; exit 1; }
    tail -2 "$out.log" | head -1
  done
done
