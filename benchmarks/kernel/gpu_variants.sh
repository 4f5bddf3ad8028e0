#!/usr/bin/env bash
# On a GPU machine: build each kernel variant, check it, and time it, side by side.
#
#   benchmarks/kernel/gpu_variants.sh "shipped:" "simt:POD_WGMMA_PREFILL=0"
#
# Each NAME:FLAGS is built with the VAR=value words of FLAGS in the environment and the others as
# POD_NVCC_FLAGS, then: the GPU kernel tests (grid, fuzz, graphs),
# compute-sanitizer memcheck on one hybrid batch, and POD's time on every STRIDE-th benchmark config
# (no vLLM needed; BENCH_ARGS adds benchmarks.kernel.bench options, e.g. "--planner prefill=1 --planner prefill=4"
# to time several planners). CHECK=0 skips the tests and memcheck and runs only one hybrid batch
# against the float32 reference (tests/sanitize_batch.py), so a wrong variant's time is flagged.
# Logs go to $OUT (or /tmp/pod-variants); a summary table ends the output.
# With BENCH=1 each variant instead runs the full benchmark against FA3 (needs vLLM), writing
# kernel_NAME.csv/.json there.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/pod-variants}
stride=${STRIDE:-3}
mkdir -p "$out"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
summary=()
for spec in "$@"; do
  name=${spec%%:*}
  flags=() envs=()
  for word in ${spec#*:}; do
    if [[ $word == *=* && $word != -* ]]; then envs+=("$word"); else flags+=("$word"); fi
  done
  export POD_NVCC_FLAGS="${flags[*]}"
  rm -rf build vllm_pod/_C*.so
  if ! env "${envs[@]}" python3 setup.py build_ext --inplace >"$out/build_$name.log" 2>&1; then
    summary+=("$name: BUILD FAILED (see build_$name.log)")
    continue
  fi
  if [ "${BENCH:-0}" = 1 ]; then
    bench=$(timeout 400 python3 -m benchmarks.kernel.bench --out "$out/kernel_$name.csv" 2>&1 | tee "$out/bench_$name.log" | grep -E 'geomean_pod_over_fa3|best_pod_over_fa3' | tr -d '\n')
    summary+=("$name [${spec#*:}]: $bench")
    continue
  fi
  tests=skipped memcheck=skipped
  if [ "${CHECK:-1}" = 1 ]; then
    tests=$(timeout 300 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py -x 2>&1 | tee "$out/tests_$name.log" | tail -1)
    memcheck=$(timeout 120 compute-sanitizer --tool memcheck python3 tests/sanitize_batch.py 2>&1 | tee "$out/memcheck_$name.log" | grep "ERROR SUMMARY")
  elif timeout 60 python3 tests/sanitize_batch.py >"$out/smoke_$name.log" 2>&1; then
    tests="one batch right"
  else
    tests="ONE BATCH WRONG (see smoke_$name.log)"
  fi
  timing=$(timeout 300 python3 -m benchmarks.kernel.bench --pod-only --stride "$stride" ${BENCH_ARGS:-} 2>&1 | tee "$out/pod_$name.txt" | tail -1)
  summary+=("$name [${spec#*:}]: tests: $tests | memcheck: ${memcheck:-none} | $timing")
done
printf '%s\n' "${summary[@]}"
