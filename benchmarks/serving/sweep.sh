#!/usr/bin/env bash
# The serving comparison on vLLM's own sweep: `vllm bench sweep serve` starts one `vllm serve` per
# entry of a backends file (configs/backends/), runs `vllm bench serve` once per entry of a workload
# file (configs/workloads/) against it, --num-runs times each, and writes each run's result JSON,
# a summary.json per combination and summary.csv under OUT/EXPERIMENT.
#
#   benchmarks/serving/sweep.sh CHUNK WORKLOAD [vllm bench sweep serve options ...]
#   benchmarks/serving/sweep.sh 2048 long-prefill --num-runs 3          # a new experiment
#   benchmarks/serving/sweep.sh 2048 long-prefill --num-runs 3 --resume # finish a cut-short one
#
# The model has a real configuration (configs/models/MODEL.json), random weights and a tokenizer
# trained here, so nothing is downloaded. Environment (defaults): MODEL (llama-3-8b), MODEL_ROOT
# (a temporary folder), BACKENDS (configs/backends/all.json), MAX_MODEL_LEN (8192), OUT
# (benchmarks/results/serving), VLLM (vllm: how to call vLLM's CLI) and PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 2 ] || { sed -n 2,15p "$0" >&2; exit 2; }
chunk=$1 workload=$2
shift 2
model=${MODEL:-llama-3-8b}
vllm=${VLLM:-vllm}
model_dir=$(${PYTHON:-python3} -m benchmarks.serving make-model "$model" ${MODEL_ROOT:+--model-root "$MODEL_ROOT"})
# Prefix caching is off, so there is no cache to reset between runs (--after-bench-cmd true).
$vllm bench sweep serve \
  --serve-cmd "$vllm serve $model_dir --host 127.0.0.1 --port 8000 --load-format dummy --dtype bfloat16 \
--max-model-len ${MAX_MODEL_LEN:-8192} --max-num-batched-tokens $chunk --max-num-seqs 256 \
--gpu-memory-utilization 0.9 --no-enable-prefix-caching" \
  --bench-cmd "$vllm bench serve --backend openai --host 127.0.0.1 --port 8000 --model $model_dir \
--tokenizer $model_dir --dataset-name random --num-warmups 4 --seed 0 --temperature 0 --ignore-eos \
--metric-percentiles 50,90,99 --disable-tqdm" \
  --after-bench-cmd true \
  --serve-params "${BACKENDS:-configs/backends/all.json}" \
  --bench-params "configs/workloads/$workload.json" \
  --server-ready-timeout 900 \
  -o "${OUT:-benchmarks/results/serving}" -e "$model-chunk$chunk-$workload" "$@"
