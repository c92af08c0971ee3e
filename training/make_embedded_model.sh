#!/usr/bin/env bash
# Rebuild the embedded default model (r3d_ros/assets/r3d_tiny) and its held-out table on a CPU, one core each
# stage (measured on the 2-core dev VM: data 10 s, SFT 9 min, GRPO 14 min, three evaluations ~8 min).
# Usage: bash training/make_embedded_model.sh [sft|grpo]   (which run to ship; default sft, see training/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
ship=${1:-sft}
export OMP_NUM_THREADS=1
bin=.venv/bin
$bin/r3d-make-data --scenes 160 --out data/synth --no-progress
$bin/r3d-train sft  --config tiny_sft  --data data/synth --output-dir runs/embedded_sft
$bin/r3d-train grpo --config tiny_grpo --data data/synth --model runs/embedded_sft/final --output-dir runs/embedded_grpo
mkdir -p results
$bin/r3d-train evaluate --data data/synth --prior --name "answer prior" --out results/prior.json
$bin/r3d-train evaluate --data data/synth --model runs/embedded_sft/final --name "SFT only" \
    --max-new-tokens 512 --out results/sft.json
$bin/r3d-train evaluate --data data/synth --model runs/embedded_grpo/final --name "SFT + GRPO" \
    --max-new-tokens 512 --out results/grpo.json
$bin/r3d-train table results/prior.json results/sft.json results/grpo.json
mkdir -p r3d_ros/assets/r3d_tiny training/results
cp runs/embedded_${ship}/final/* r3d_ros/assets/r3d_tiny/
cp results/prior.json results/sft.json results/grpo.json training/results/
