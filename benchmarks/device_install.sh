#!/usr/bin/env bash
# On a GPU machine where vLLM lives in a plain site directory (the device tool's bundle, /tmp/site):
# build the extension in place and declare POD's vllm.general_plugins entry point there, so every
# process vLLM starts finds the plugin. Then: export PYTHONPATH=$PWD:$PYTHONPATH.
#
#   source .bundle/unpack.sh && benchmarks/device_install.sh [SITE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
site=${1:-/tmp/site}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
if ! python3 setup.py build_ext --inplace >/tmp/vllm_pod_build.log 2>&1; then
  tail -40 /tmp/vllm_pod_build.log >&2
  exit 1
fi
version=$(python3 setup.py --version 2>/dev/null | tail -1)
info=$site/vllm_pod-$version.dist-info
mkdir -p "$info"
# Named as the package, so importlib.metadata (the serving harness's version record) finds it.
printf 'Metadata-Version: 2.1\nName: vllm-pod\nVersion: %s\n' "$version" >"$info/METADATA"
printf '[vllm.general_plugins]\npod = vllm_pod:register\n' >"$info/entry_points.txt"
echo "vllm-pod: extension built, entry point declared in $info"
