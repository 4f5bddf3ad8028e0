#!/usr/bin/env bash
# Without a GPU: compile the Hopper kernel (bf16, head dim 128, sm_90a) with extra flags and print
# its registers/spills, which opcode feeds each softmax rescale factor (anything but FADD means
# the rescale is never skipped), the static length and opcode mix of its wgmma loops and the
# length of each path through the inner ones (e.g. an unmasked tile without a rescale), so that a
# candidate's instruction count is known before it runs (docs/design.md, "Pipelines and barriers").
#
#   benchmarks/kernel/sass_count.sh [-DFLAG=VALUE ...]
#
# Needs nvcc, the CuTe headers (FlashInfer's, or POD_CUTE_INCLUDE) and cuobjdump on PATH (a CUDA
# install without it can take the one in the nvidia-cuda-cuobjdump wheel).
set -euo pipefail
cd "$(dirname "$0")/../.."
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
python3 -m benchmarks.kernel.sass_mix --static --paths "$tmp/pod.sass" --function Lb1E
