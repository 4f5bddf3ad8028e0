#!/usr/bin/env bash
# On a GPU machine: build each kernel variant, check it, and time it, side by side.
#
#   benchmarks/kernel/gpu_variants.sh "shipped:" "simt:POD_WGMMA_PREFILL=0"
#   benchmarks/kernel/gpu_variants.sh "before@main:" "new:"
#
# Each NAME[@REV]:FLAGS is built in a copy of its own under $OUT/src_NAME: of git revision REV, or
# of the working tree (tracked and untracked files, not ignored ones) without @REV; the VAR=value
# words of FLAGS go to the environment and the others to POD_NVCC_FLAGS. Each variant then runs the
# GPU kernel tests (grid, fuzz, graphs) and compute-sanitizer memcheck on one hybrid batch. Then
# ROUNDS rounds (default 2) time POD alone in every variant, each in its own process, the order
# reversed every other round (so neither side is always timed first): every STRIDE-th benchmark
# config, prefill chunks alone for each CHUNK,PREFIX of PREFILLS (default "512,0 1024,4096
# 2048,12288"), and decodes alone for each N,CTX of DECODES (default "128,8192 32,32768 8,131072"). No
# vLLM needed; BENCH_ARGS adds benchmarks.kernel.bench options to every timing (e.g.
# "--kv-cache-dtype fp8", or "--planner prefill=1 --planner prefill=4" to time several planners).
# CHECK=0 skips the tests and memcheck and runs only one hybrid batch against the float32 reference
# (tests/sanitize_batch.py), so a wrong variant's time is flagged. Logs go to $OUT (or
# /tmp/pod-variants); a summary table ends the output. With BENCH=1 each variant instead runs the
# full benchmark against FA3 once (needs vLLM), writing kernel_NAME.csv/.json there.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=$(realpath -m "${OUT:-/tmp/pod-variants}")
stride=${STRIDE:-3}
rounds=${ROUNDS:-2}
decodes=${DECODES:-"128,8192 32,32768 8,131072"}
prefills=${PREFILLS:-"512,0 1024,4096 2048,12288"}
mkdir -p "$out"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
names=() summary=()
in_src() {  # in_src NAME COMMAND...: run COMMAND in variant NAME's copy, importing that copy's vllm_pod
  (cd "$out/src_$1" && PYTHONPATH=$PWD "${@:2}")
}
time_alone() {  # time_alone NAME LABEL CHUNK,PREFIX,DECODES,CTX: POD's time on that one grid batch
  echo "$2: $(in_src "$1" timeout 120 python3 -m benchmarks.kernel.bench --pod-only --only "$3" ${BENCH_ARGS:-} | tail -1)"
}
for spec in "$@"; do
  head=${spec%%:*}
  name=${head%%@*}
  src="$out/src_$name"
  rm -rf "$src" && mkdir -p "$src"
  if [[ $head == *@* ]]; then
    git archive "${head#*@}" | tar -x -C "$src" || { summary+=("$name: NO REVISION ${head#*@}"); continue; }
  else
    git ls-files -z -co --exclude-standard | tar -c --null -T - | tar -x -C "$src"
  fi
  flags=() envs=()
  for word in ${spec#*:}; do
    if [[ $word == *=* && $word != -* ]]; then envs+=("$word"); else flags+=("$word"); fi
  done
  if ! in_src "$name" env POD_NVCC_FLAGS="${flags[*]}" "${envs[@]}" python3 setup.py build_ext --inplace \
       >"$out/build_$name.log" 2>&1; then
    summary+=("$name: BUILD FAILED (see build_$name.log)")
    continue
  fi
  if [ "${BENCH:-0}" = 1 ]; then
    bench=$(in_src "$name" timeout 400 python3 -m benchmarks.kernel.bench --out "$out/kernel_$name.csv" 2>&1 |
            tee "$out/bench_$name.log" | grep -E 'geomean_pod_over_fa3|best_pod_over_fa3' | tr -d '\n')
    summary+=("$name [${spec#*:}]: $bench")
    continue
  fi
  tests=skipped memcheck=skipped
  if [ "${CHECK:-1}" = 1 ]; then
    tests=$(in_src "$name" timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernel_gpu.py -x 2>&1 |
            tee "$out/tests_$name.log" | tail -1)
    memcheck=$(in_src "$name" timeout 120 compute-sanitizer --tool memcheck python3 tests/sanitize_batch.py 2>&1 |
               tee "$out/memcheck_$name.log" | grep "ERROR SUMMARY")
  elif in_src "$name" timeout 60 python3 tests/sanitize_batch.py >"$out/smoke_$name.log" 2>&1; then
    tests="one batch right"
  else
    tests="ONE BATCH WRONG (see smoke_$name.log)"
  fi
  names+=("$name")
  summary+=("$name [${spec#*:}]: tests: $tests | memcheck: ${memcheck:-none}")
done
# Timing rounds: POD alone, each variant in its own process, alternating the order.
for ((r = 1; r <= rounds; r++)); do
  order=("${names[@]}")
  if ((r % 2 == 0)); then
    order=()
    for ((i = ${#names[@]} - 1; i >= 0; i--)); do order+=("${names[i]}"); done
  fi
  for name in "${order[@]}"; do
    log="$out/pod_${name}_round$r.txt"
    {
      in_src "$name" timeout 300 python3 -m benchmarks.kernel.bench --pod-only --stride "$stride" ${BENCH_ARGS:-}
      for c in $prefills; do time_alone "$name" "prefill alone $c" "$c,0,0"; done
      for d in $decodes; do time_alone "$name" "decodes alone $d" "0,0,$d"; done
    } >"$log" 2>&1
    summary+=("$name round $r: $(grep -h '^geomean' "$log" | tr -d '\n') | $(grep -h '^prefill alone\|^decodes alone' "$log" |
              sed 's/geomean pod_us //' | tr '\n' ';')")
  done
done
printf '%s\n' "${summary[@]}"
