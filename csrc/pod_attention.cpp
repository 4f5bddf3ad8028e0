// The torch op: checks its inputs against what the kernel supports, fills PodParams from tensor
// pointers and strides (nothing is copied), and dispatches on dtype and head dim.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/extension.h>

#include "pod_attention.h"

namespace {

// Numbers go into messages through std::to_string, not c10::str: on the GPU image the extension
// links its own copy of libstdc++'s stream code, whose number formatting crashed (seen
// 2026-11-27: SIGSEGV in ostream::_M_insert<long> while building an error message).
std::string num(int64_t v) { return std::to_string(v); }
std::string nums(at::IntArrayRef v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

constexpr const char* kSupported =
    "vllm_pod supports dtypes float16/bfloat16, head dims 64/96/128/256, block sizes 16/32/64, "
    "and num_q_heads divisible by num_kv_heads";

void check_rows_aligned(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.stride(-1) == 1, name, ": the last (head) dim must be contiguous");
  for (int i = 0; i < t.dim() - 1; ++i)
    TORCH_CHECK(t.stride(i) % 8 == 0, name, ": strides must be multiples of 8 elements (16 bytes), got ",
                nums(t.strides()));
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name, ": must be 16-byte aligned");
}

// The D of the build that runs a head dim: 96 runs on the 128 build (pod::PodParams::head_dim), so
// it adds no instantiation. BUILD_HEAD_DIMS in vllm_pod/plan.py mirrors this.
int64_t build_head_dim(int64_t head_dim) { return head_dim == 96 ? 128 : head_dim; }

// Calls Op::run<T, D>(args...) for the runtime dtype and head dim (checked beforehand).
template <class Op, typename... Args>
cudaError_t dispatch(at::ScalarType dtype, int64_t head_dim, Args&&... args) {
  const bool bf16 = dtype == at::kBFloat16;
  switch (build_head_dim(head_dim)) {
    case 64:
      return bf16 ? Op::template run<__nv_bfloat16, 64>(args...) : Op::template run<__half, 64>(args...);
    case 128:
      return bf16 ? Op::template run<__nv_bfloat16, 128>(args...) : Op::template run<__half, 128>(args...);
    default:
      return bf16 ? Op::template run<__nv_bfloat16, 256>(args...) : Op::template run<__half, 256>(args...);
  }
}
struct Launch {
  template <typename T, int D>
  static cudaError_t run(const pod::PodParams& p, int num_ctas, cudaStream_t s) { return pod::launch<T, D>(p, num_ctas, s); }
};
struct PrefillRows {
  template <typename T, int D>
  static cudaError_t run(int* n) {
    *n = pod::prefill_tile_rows<T, D>();
    return cudaSuccess;
  }
};
struct Occupancy {
  template <typename T, int D>
  static cudaError_t run(int* n) { return pod::ctas_per_sm<T, D>(n); }
};

void check_dtype_and_head_dim(at::ScalarType dtype, int64_t head_dim) {
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kHalf, "unsupported dtype ", dtype, "; ",
              kSupported);
  TORCH_CHECK(head_dim == 64 || head_dim == 96 || head_dim == 128 || head_dim == 256, "unsupported head dim ",
              num(head_dim), "; ", kSupported);
}

int64_t ctas_per_sm(at::ScalarType dtype, int64_t head_dim) {
  check_dtype_and_head_dim(dtype, head_dim);
  int n = 0;
  const cudaError_t e = dispatch<Occupancy>(dtype, head_dim, &n);
  TORCH_CHECK(e == cudaSuccess, "occupancy query failed: ", cudaGetErrorString(e));
  return n;
}

int64_t prefill_tile_rows(at::ScalarType dtype, int64_t head_dim) {
  check_dtype_and_head_dim(dtype, head_dim);
  int n = 0;
  dispatch<PrefillRows>(dtype, head_dim, &n);
  return n;
}

void pod_attention(at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                   const at::Tensor& value_cache, const at::Tensor& block_table,
                   const at::Tensor& plan, at::Tensor& counters, at::Tensor& workspace,
                   double softmax_scale, double logits_soft_cap, int64_t sliding_window,
                   const std::optional<at::Tensor>& sinks, int64_t ctas_per_sm, int64_t num_sms,
                   int64_t plan_prefill_rows) {
  const at::Tensor* all[] = {&out, &query, &key_cache, &value_cache, &block_table, &plan, &counters, &workspace};
  for (const at::Tensor* t : all)
    TORCH_CHECK(t->is_cuda() && t->device() == query.device(),
                "all tensors must be on the query's CUDA device");
  TORCH_CHECK(query.dim() == 3, "query must be [num_tokens, num_q_heads, head_dim]");
  TORCH_CHECK(key_cache.dim() == 4 && value_cache.dim() == 4 && key_cache.sizes() == value_cache.sizes(),
              "key/value cache must both be [num_blocks, block_size, num_kv_heads, head_dim]");
  const int64_t head_dim = query.size(2), hq = query.size(1), hkv = key_cache.size(2);
  const int64_t block_size = key_cache.size(1);
  check_dtype_and_head_dim(query.scalar_type(), head_dim);
  TORCH_CHECK(key_cache.scalar_type() == query.scalar_type() && value_cache.scalar_type() == query.scalar_type() &&
                  out.scalar_type() == query.scalar_type(),
              "query, key/value cache and out must share one dtype (fp8 KV cache is not supported)");
  TORCH_CHECK(key_cache.size(3) == head_dim, "key/value head dim ", num(key_cache.size(3)),
              " differs from the query's ", num(head_dim));
  TORCH_CHECK(block_size == 16 || block_size == 32 || block_size == 64, "unsupported block size ",
              num(block_size), "; ", kSupported);
  TORCH_CHECK(hkv > 0 && hq % hkv == 0, "num_q_heads ", num(hq), " is not a multiple of num_kv_heads ",
              num(hkv));
  TORCH_CHECK(out.sizes() == query.sizes(), "out must have the query's shape");
  check_rows_aligned(query, "query");
  check_rows_aligned(out, "out");
  check_rows_aligned(key_cache, "key_cache");
  check_rows_aligned(value_cache, "value_cache");
  // The K/V loader (tile_loader.cuh) computes offsets within a block in 32 bits.
  for (const at::Tensor* t : {&key_cache, &value_cache})
    TORCH_CHECK(t->stride(0) < (int64_t(1) << 31) &&
                    (block_size - 1) * t->stride(1) + (hkv - 1) * t->stride(2) + head_dim < (int64_t(1) << 31),
                "key/value cache strides too large for 32-bit offsets within a block: ", nums(t->strides()));
  TORCH_CHECK(block_table.scalar_type() == at::kInt && block_table.dim() == 2 && block_table.stride(1) == 1,
              "block_table must be int32 [num_reqs, max_blocks] with contiguous rows");
  TORCH_CHECK(plan.scalar_type() == at::kInt && plan.is_contiguous(), "plan must be contiguous int32");
  TORCH_CHECK(counters.scalar_type() == at::kInt && counters.is_contiguous() &&
                  counters.numel() >= pod::kCtrMerge,
              "counters must be contiguous int32 with at least ", num(pod::kCtrMerge), " entries");
  TORCH_CHECK(workspace.scalar_type() == at::kFloat && workspace.is_contiguous(),
              "workspace must be contiguous float32");
  TORCH_CHECK(ctas_per_sm >= 1 && num_sms >= 1, "ctas_per_sm and num_sms must be positive");
  TORCH_CHECK(logits_soft_cap >= 0.0, "logits_soft_cap must be positive (0: none)");
  TORCH_CHECK(sliding_window >= 0 && sliding_window < pod::kNoWindow,
              "sliding_window must be a window of positions below 2^30 (0: none), got ", num(sliding_window));
  if (sinks.has_value()) {
    const at::ScalarType t = sinks->scalar_type();
    TORCH_CHECK(sinks->is_cuda() && sinks->device() == query.device() && sinks->dim() == 1 &&
                    sinks->size(0) == hq && sinks->is_contiguous(),
                "sinks must be one contiguous logit per query head ([", num(hq), "]) on the query's device");
    TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf,
                "sinks must be float32, bfloat16 or float16");
  }

  const int64_t ws_dim = build_head_dim(head_dim);  // workspace rows are the build's width
  const int64_t ws_rows = workspace.numel() / (ws_dim + 1);
  pod::PodParams p{};
  p.q = query.data_ptr();
  p.k = key_cache.data_ptr();
  p.v = value_cache.data_ptr();
  p.out = out.data_ptr();
  p.block_table = block_table.data_ptr<int>();
  p.plan = plan.data_ptr<int>();
  p.counters = counters.data_ptr<int>();
  p.partial_o = workspace.data_ptr<float>();
  p.partial_lse = p.partial_o + ws_rows * ws_dim;
  p.q_stride_tok = query.stride(0);
  p.q_stride_head = query.stride(1);
  p.o_stride_tok = out.stride(0);
  p.o_stride_head = out.stride(1);
  p.k_stride_blk = key_cache.stride(0);
  p.k_stride_tok = key_cache.stride(1);
  p.k_stride_head = key_cache.stride(2);
  p.v_stride_blk = value_cache.stride(0);
  p.v_stride_tok = value_cache.stride(1);
  p.v_stride_head = value_cache.stride(2);
  p.bt_stride = block_table.stride(0);
  p.group = static_cast<int>(hq / hkv);
  p.head_dim = static_cast<int>(head_dim);
  p.log2_block_size = __builtin_ctzll(block_size);
  p.scale_log2 = static_cast<float>(softmax_scale * 1.4426950408889634);
  p.ctas_per_sm = static_cast<int>(ctas_per_sm);
  p.softcap_in = logits_soft_cap > 0.0 ? static_cast<float>(softmax_scale / logits_soft_cap) : 0.f;
  p.softcap_out = logits_soft_cap > 0.0 ? static_cast<float>(logits_soft_cap / softmax_scale) : 0.f;
  p.window_left = sliding_window > 0 ? static_cast<int>(sliding_window - 1) : pod::kNoWindow;
  if (sinks.has_value()) {
    p.sinks = sinks->data_ptr();
    const at::ScalarType t = sinks->scalar_type();
    p.sinks_dtype = t == at::kBFloat16 ? pod::kSinksBf16 : t == at::kHalf ? pod::kSinksHalf : pod::kSinksFloat;
  }

  const c10::cuda::CUDAGuard guard(query.device());
  // A prefill item taller than the kernel's tile would lose its extra rows: refuse the plan.
  int tile_rows = 0;
  dispatch<PrefillRows>(query.scalar_type(), head_dim, &tile_rows);  // dtype/head dim checked above
  TORCH_CHECK(plan_prefill_rows >= 1 && plan_prefill_rows <= tile_rows, "the plan was made for ",
              num(plan_prefill_rows), "-row prefill tiles but this GPU's kernel tile has ", num(tile_rows),
              " rows: make the PodPlanner with prefill_rows=vllm_pod.ops.device_prefill_tile_rows(dtype, head_dim)");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int num_ctas = static_cast<int>(num_sms * ctas_per_sm);
  const cudaError_t e = dispatch<Launch>(query.scalar_type(), head_dim, p, num_ctas, stream);
  TORCH_CHECK(e == cudaSuccess, "pod_attention launch failed: ", cudaGetErrorString(e));
}

}  // namespace

TORCH_LIBRARY(vllm_pod, m) {
  m.def(
      "pod_attention(Tensor(a!) out, Tensor query, Tensor key_cache, Tensor value_cache, "
      "Tensor block_table, Tensor plan, Tensor(b!) counters, Tensor(c!) workspace, "
      "float softmax_scale, float logits_soft_cap, int sliding_window, Tensor? sinks, "
      "int ctas_per_sm, int num_sms, int plan_prefill_rows) -> ()");
  m.impl("pod_attention", torch::kCUDA, &pod_attention);
  m.def("ctas_per_sm(ScalarType dtype, int head_dim) -> int", &ctas_per_sm);
  m.def("prefill_tile_rows(ScalarType dtype, int head_dim) -> int", &prefill_tile_rows);
}

// Importing vllm_pod._C registers the ops above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
