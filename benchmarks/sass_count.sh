#!/usr/bin/env bash
# Without a GPU: compile the Hopper kernel (bf16, head dim 128, sm_90a) with extra flags and print
# its registers/spills and the static length and opcode mix of its wgmma loops, so that a
# candidate's instruction count is known before a device call (benchmarks/NOTES.md, session 5).
#
#   benchmarks/sass_count.sh [-DFLAG=VALUE ...]
#
# Needs nvcc, the CuTe headers (FlashInfer's, or POD_CUTE_INCLUDE) and cuobjdump on PATH. The CUDA
# image here has no cuobjdump; `pip download --no-deps nvidia-cuda-cuobjdump` and unzipping the
# wheel gives one (nvidia/cu13/bin/cuobjdump; chmod +x).
set -euo pipefail
cd "$(dirname "$0")/.."
cuda=${CUDA_HOME:-/usr/local/cuda}
cute=$(python3 -c "from vllm_pod.build_paths import cute_include_dir; print(cute_include_dir() or '')")
[ -n "$cute" ] || { echo "CuTe headers not found (install flashinfer-python or set POD_CUTE_INCLUDE)" >&2; exit 1; }
command -v cuobjdump >/dev/null || { echo "cuobjdump not on PATH (see the header of $0)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$cuda/bin/nvcc" -std=c++17 -DPOD_WGMMA_PREFILL "$@" -I"$cute" -Icsrc -gencode=arch=compute_90a,code=sm_90a \
  -cubin -O3 --use_fast_math -Xptxas -v csrc/instantiations/pod_bf16_hd128.cu -o "$tmp/pod.cubin" 2>&1 |
  grep -A2 "Function properties.*Lb1E" | tail -2
cuobjdump -sass "$tmp/pod.cubin" >"$tmp/pod.sass"
python3 -m benchmarks.sass_mix --static "$tmp/pod.sass" --function Lb1E
