"""The Hopper prefill tile's swizzled shared-memory layout and wgmma descriptor strides, checked
against CuTe on the host (nvcc and FlashInfer's CUTLASS headers; no GPU)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vllm_pod.build_paths import cute_include_dir

ROOT = Path(__file__).resolve().parents[1]


def nvcc() -> str | None:
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    path = Path(cuda) / "bin" / "nvcc"
    return str(path) if path.exists() else shutil.which("nvcc")


@pytest.mark.skipif(nvcc() is None or cute_include_dir() is None, reason="needs nvcc and CuTe headers")
def test_sw128_layout_and_descriptors_match_cute(tmp_path):
    exe = tmp_path / "layout_check"
    subprocess.run([nvcc(), "-std=c++17", "-DPOD_WGMMA_PREFILL", f"-I{cute_include_dir()}",
                    f"-I{ROOT / 'csrc'}", "-gencode=arch=compute_90a,code=sm_90a",
                    str(ROOT / "tests" / "sm90" / "layout_check.cu"), "-o", str(exe)],
                   check=True, capture_output=True, text=True, timeout=600)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "0 failures" in run.stdout


@pytest.mark.skipif(nvcc() is None or cute_include_dir() is None, reason="needs nvcc and CuTe headers")
def test_wgmma_variant_compiles_to_wgmma(tmp_path):
    # The sm_90a build (setup.py adds -DPOD_WGMMA_PREFILL there) must run its prefill step on wgmma
    # (S = Q K^T as m64n64k16, O += P V as m64n128k16 at head dim 128), not mma.sync, in the
    # warp-specialized kernel: registers moved between roles, copies completing on mbarriers.
    ptx = tmp_path / "pod.ptx"
    subprocess.run([nvcc(), "-DPOD_WGMMA_PREFILL", f"-I{cute_include_dir()}", f"-I{ROOT / 'csrc'}",
                    "-arch=compute_90a", "-ptx", "-O3",
                    str(ROOT / "csrc" / "instantiations" / "pod_bf16_hd128.cu"), "-o", str(ptx)],
                   check=True, capture_output=True, text=True, timeout=600)
    text = ptx.read_text()
    assert "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16" in text
    assert "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16" in text
    assert "setmaxnreg.dec.sync.aligned.u32 56" in text
    assert "setmaxnreg.inc.sync.aligned.u32 160" in text
    assert "setmaxnreg.inc.sync.aligned.u32 136" in text
    assert "cp.async.mbarrier.arrive.noinc.shared::cta.b64" in text


# The sm_90a builds of both Hopper kernels (head dim 128: warp-specialized; 256: two CTAs per SM)
# and the trace build (trace.cuh), which must keep compiling: instantiation and extra flags.
BUILDS = {"default": ("pod_bf16_hd128.cu", []), "hd256": ("pod_bf16_hd256.cu", []),
          "trace": ("pod_bf16_hd128.cu", ["-DPOD_TRACE=1"])}


@pytest.mark.skipif(nvcc() is None or cute_include_dir() is None, reason="needs nvcc and CuTe headers")
@pytest.mark.parametrize("build", BUILDS)
def test_wgmma_is_not_serialised(tmp_path, build):
    # ptxas falls back to serialised wgmma (warnings C7514/C7515) when ordinary instructions may
    # touch the accumulators of a wgmma in flight; the prefill loop's overlap would be lost silently.
    source, flags = BUILDS[build]
    run = subprocess.run([nvcc(), "-DPOD_WGMMA_PREFILL", *flags, f"-I{cute_include_dir()}",
                          f"-I{ROOT / 'csrc'}", "-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-O3",
                          "--use_fast_math", "-Xptxas", "-v",
                          str(ROOT / "csrc" / "instantiations" / source),
                          "-o", str(tmp_path / "pod.cubin")],
                         check=True, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert "Used" in log  # ptxas reported on the kernels
    assert "C7514" not in log and "C7515" not in log, log[-3000:]


@pytest.mark.skipif(nvcc() is None, reason="needs nvcc")
def test_builds_without_cute(tmp_path):
    # Without CuTe's headers (or with POD_WGMMA_PREFILL=0) setup.py builds no -DPOD_WGMMA_PREFILL:
    # every kernel then runs the mma.sync tiles, and no header may need CUTLASS.
    subprocess.run([nvcc(), "-std=c++17", f"-I{ROOT / 'csrc'}", "-gencode=arch=compute_80,code=sm_80",
                    "-gencode=arch=compute_90a,code=sm_90a", "-c", "-O1",
                    str(ROOT / "csrc" / "instantiations" / "pod_bf16_hd128.cu"), "-o", str(tmp_path / "pod.o")],
                   check=True, capture_output=True, text=True, timeout=600)
