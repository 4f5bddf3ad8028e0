// Thin wrappers over the PTX instructions the tiles use (sm_80+): cp.async, ldmatrix, mma.sync.
// Kept apart so a Hopper path (wgmma, TMA) can add its own header without touching these.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cstdint>
#include <type_traits>

namespace pod {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global->shared; src_bytes = 0 zero-fills the destination (out-of-range keys/rows).
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem_dst)),
               "l"(gmem_src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
// Waits until at most n of this thread's newest commit groups are pending, for a run-time n
// (the instruction takes an immediate); n above kMax waits as for kMax.
template <int kMax>
__device__ __forceinline__ void cp_async_wait_newest(int n) {
  if constexpr (kMax <= 0) {
    cp_async_wait<0>();
  } else if (n >= kMax) {
    cp_async_wait<kMax>();
  } else {
    cp_async_wait_newest<kMax - 1>(n);
  }
}

// Makes this thread's completed shared-memory writes (cp.async included) visible to the async proxy
// (wgmma reads operands through it); a barrier must follow before the wgmma.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// D += A B on one m16n8k16 tile: A row-major 16x16, B column-major 16x8, fp32 accumulators.
template <typename T>
struct MmaOp {
  __device__ __forceinline__ static void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    if constexpr (std::is_same_v<T, __half>)
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
          "{%8,%9}, {%0,%1,%2,%3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
          "{%8,%9}, {%0,%1,%2,%3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// The transpose of an 8x8 matrix of 16-bit values held one row per four lanes (lane l: row l / 4,
// columns 2 (l % 4) and 2 (l % 4) + 1): the m16n8 accumulator layout in, the B-operand layout out.
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// Two e4m3 values (bytes 0 and 1 of w, or with kHigh bytes 2 and 3; lowest first) as two fp16
// values in one register: exact. The conversion reads a 16-bit half of w directly (no shift).
template <bool kHigh = false>
__device__ __forceinline__ uint32_t e4m3x2_to_half2(uint32_t w) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint32_t h;
  if constexpr (kHigh)
    asm("{ .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, hi;\n }" : "=r"(h) : "r"(w));
  else
    asm("{ .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, lo;\n }" : "=r"(h) : "r"(w));
  return h;
#else
  __trap();  // fp8 configurations run on sm_90 only
  return 0;
#endif
}

// Two floats packed into one 32-bit register of T (the A operand of P·V, and output stores).
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// bar.sync on hardware barrier `id` for `n` threads (whole warps). __syncthreads is barrier 0 with
// every thread of the CTA; the warp-specialized kernel gives each role a barrier of its own.
__device__ __forceinline__ void named_barrier_sync(int id, int n) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}

// The threads that work on one item together and synchronise among themselves: the whole
// 128-thread CTA of the two-CTA kernel (barrier 0), or a role of the warp-specialized kernel.
template <int kSize>
struct Team {
  static constexpr int kThreads = kSize;
  int tid;      // this thread's index in the team
  int barrier;  // its hardware barrier id
  __device__ __forceinline__ void sync() const { named_barrier_sync(barrier, kSize); }
  __device__ __forceinline__ int warp() const { return tid >> 5; }
  __device__ __forceinline__ bool leader() const { return tid == 0; }
};

__device__ __forceinline__ uint32_t sm_id() {
  uint32_t id;
  asm volatile("mov.u32 %0, %%smid;\n" : "=r"(id));
  return id;
}
__device__ __forceinline__ uint32_t sm_id_bound() {
  uint32_t n;
  asm volatile("mov.u32 %0, %%nsmid;\n" : "=r"(n));
  return n;
}

}  // namespace pod
