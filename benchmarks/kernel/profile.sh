#!/usr/bin/env bash
# On a GPU machine: Nsight Compute on POD's kernel and, when vLLM is importable, on FA3's for the
# same hybrid batches, with the same sections, so that their warp stalls and memory traffic can be
# read side by side.
#
#   OUT=/tmp/prof benchmarks/kernel/profile.sh [CHUNK,PREFIX,DECODES,CTX ...]
#
# Default batches: 2048,12288,16,2048 (a long prefill with few decodes, where POD loses most
# by time) and 512,4096,16,2048 (the grid's worst ratio). Per batch and kernel, in $OUT:
# NAME.txt (sections, rule notes and the per-reason warp-stall breakdown), NAME_sass.csv (SASS with
# per-instruction stall samples: where the warps wait), NAME_mix.txt (the instruction mix and the
# hot loop's length, benchmarks/kernel/sass_mix.py), NAME_loops.txt (each innermost loop's stall
# samples by reason: the key loops of the producer, consumers and decode warps apart) and
# NAME.ncu-rep. A summary line per profile ends the output.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/pod-profile}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
sections=(--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis
          --section MemoryWorkloadAnalysis_Tables --section SchedulerStats --section WarpStateStats
          --section Occupancy --section LaunchStats --section SourceCounters)
stalls='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
summary=()

profile() {  # NAME KERNEL_REGEX COMMAND...
  local name=$1 kernel=$2
  shift 2
  if ! timeout 300 ncu --clock-control none --kernel-name-base demangled -k "regex:$kernel" -c 1 \
      "${sections[@]}" --metrics "$stalls" -f -o "$out/$name" "$@" >"$out/$name.log" 2>&1; then
    summary+=("$name: ncu failed (see $name.log)")
    return
  fi
  ncu -i "$out/$name.ncu-rep" --print-details all >"$out/$name.txt" 2>&1 ||
    ncu -i "$out/$name.ncu-rep" >"$out/$name.txt" 2>&1
  ncu -i "$out/$name.ncu-rep" --page source --print-source sass --csv >"$out/${name}_sass.csv" 2>&1
  python3 -m benchmarks.kernel.sass_mix "$out/${name}_sass.csv" >"$out/${name}_mix.txt" 2>&1
  python3 -m benchmarks.kernel.sass_mix --loops "$out/${name}_sass.csv" >"$out/${name}_loops.txt" 2>&1
  summary+=("$name: $(grep -m1 -E '^ *Duration' "$out/$name.txt" | tr -s ' '); $(grep -m1 'hot loop' "$out/${name}_mix.txt")")
}

batches=("$@")
[ ${#batches[@]} -gt 0 ] || batches=(2048,12288,16,2048 512,4096,16,2048)
for b in "${batches[@]}"; do
  tag=${b//,/_}
  profile "pod_$tag" 'pod_attention_kernel|pod_warp_specialized_kernel' python3 -m benchmarks.kernel.bench --pod-only --only "$b" --iters 1
  if python3 -c "import vllm" 2>/dev/null; then
    # The benchmark checks POD against FA3's one call first: its first FA3 launch is that call.
    profile "fa3_$tag" 'FlashAttnFwd' python3 -m benchmarks.kernel.bench --only "$b" --iters 1
  fi
done
printf '%s\n' "${summary[@]}"
