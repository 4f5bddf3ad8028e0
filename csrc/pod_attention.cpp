// The torch op: checks its inputs against what the kernel supports, fills PodParams from tensor
// pointers and strides (nothing is copied), and dispatches on dtype and head dim.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
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
    "vllm_pod supports dtypes float16/bfloat16 (and float8_e4m3fn for query and KV cache beside a "
    "float16/bfloat16 output, on compute capability 9.0), head dims 64/96/128/256, block sizes "
    "16/32/64, and num_q_heads divisible by num_kv_heads";

// Where an fp8 configuration is asked of a build or device without one (launch.cuh).
constexpr const char* kFp8NeedsHopper = "an fp8 KV cache needs compute capability 9.0 and the sm_90a build; ";

void check_rows_aligned(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.stride(-1) == 1, name, ": the last (head) dim must be contiguous");
  for (int i = 0; i < t.dim() - 1; ++i)
    TORCH_CHECK(t.stride(i) * t.element_size() % 16 == 0, name, ": strides must be multiples of 16 bytes, got ",
                nums(t.strides()));
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name, ": must be 16-byte aligned");
}

// The D of the build that runs a head dim: 96 runs on the 128 build (pod::PodParams::head_dim), so
// it adds no instantiation. BUILD_HEAD_DIMS in vllm_pod/plan.py mirrors this.
int64_t build_head_dim(int64_t head_dim) { return head_dim == 96 ? 128 : head_dim; }

// Calls Op::run<T, D>(args...) for the runtime KV cache dtype and head dim (checked beforehand).
template <class Op, int D, typename... Args>
cudaError_t dispatch_dtype(at::ScalarType dtype, Args&&... args) {
  if (dtype == at::kBFloat16) return Op::template run<__nv_bfloat16, D>(args...);
  if (dtype == at::kHalf) return Op::template run<__half, D>(args...);
  return Op::template run<__nv_fp8_e4m3, D>(args...);
}
template <class Op, typename... Args>
cudaError_t dispatch(at::ScalarType dtype, int64_t head_dim, Args&&... args) {
  switch (build_head_dim(head_dim)) {
    case 64: return dispatch_dtype<Op, 64>(dtype, args...);
    case 128: return dispatch_dtype<Op, 128>(dtype, args...);
    default: return dispatch_dtype<Op, 256>(dtype, args...);
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

// dtype: the KV cache's (float8_e4m3fn for an fp8 cache).
void check_dtype_and_head_dim(at::ScalarType dtype, int64_t head_dim) {
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kFloat8_e4m3fn,
              "unsupported dtype ", dtype, "; ", kSupported);
  TORCH_CHECK(head_dim == 64 || head_dim == 96 || head_dim == 128 || head_dim == 256, "unsupported head dim ",
              num(head_dim), "; ", kSupported);
}

int64_t ctas_per_sm(at::ScalarType dtype, int64_t head_dim) {
  check_dtype_and_head_dim(dtype, head_dim);
  int n = 0;
  const cudaError_t e = dispatch<Occupancy>(dtype, head_dim, &n);
  TORCH_CHECK(e != cudaErrorNotSupported, kFp8NeedsHopper, kSupported);
  TORCH_CHECK(e == cudaSuccess, "occupancy query failed: ", cudaGetErrorString(e));
  return n;
}

int64_t prefill_tile_rows(at::ScalarType dtype, int64_t head_dim) {
  check_dtype_and_head_dim(dtype, head_dim);
  int n = 0;
  dispatch<PrefillRows>(dtype, head_dim, &n);
  TORCH_CHECK(n > 0, kFp8NeedsHopper, kSupported);
  return n;
}

void pod_attention(at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                   const at::Tensor& value_cache, const at::Tensor& block_table,
                   const at::Tensor& plan, at::Tensor& counters, at::Tensor& workspace,
                   double softmax_scale, double logits_soft_cap, int64_t sliding_window,
                   const std::optional<at::Tensor>& sinks, const std::optional<at::Tensor>& q_descale,
                   const std::optional<at::Tensor>& k_descale, const std::optional<at::Tensor>& v_descale,
                   int64_t ctas_per_sm, int64_t num_sms, int64_t plan_prefill_rows) {
  const at::Tensor* all[] = {&out, &query, &key_cache, &value_cache, &block_table, &plan, &counters, &workspace};
  for (const at::Tensor* t : all)
    TORCH_CHECK(t->is_cuda() && t->device() == query.device(),
                "all tensors must be on the query's CUDA device");
  TORCH_CHECK(query.dim() == 3, "query must be [num_tokens, num_q_heads, head_dim]");
  TORCH_CHECK(key_cache.dim() == 4 && value_cache.dim() == 4 && key_cache.sizes() == value_cache.sizes(),
              "key/value cache must both be [num_blocks, block_size, num_kv_heads, head_dim]");
  const int64_t head_dim = query.size(2), hq = query.size(1), hkv = key_cache.size(2);
  const int64_t block_size = key_cache.size(1);
  const at::ScalarType cache_dtype = key_cache.scalar_type();
  const bool fp8 = cache_dtype == at::kFloat8_e4m3fn;
  check_dtype_and_head_dim(cache_dtype, head_dim);
  TORCH_CHECK(value_cache.scalar_type() == cache_dtype && query.scalar_type() == cache_dtype,
              "query and key/value cache must share one dtype (an fp8 cache takes an fp8 query, as "
              "FLASH_ATTN's); ", kSupported);
  const at::ScalarType out_dtype = out.scalar_type();
  TORCH_CHECK(fp8 ? out_dtype == at::kBFloat16 || out_dtype == at::kHalf : out_dtype == cache_dtype,
              "out must have the query's dtype, or float16/bfloat16 beside an fp8 query; ", kSupported);
  const std::optional<at::Tensor>* descales[] = {&q_descale, &k_descale, &v_descale};
  for (const std::optional<at::Tensor>* d : descales) {
    TORCH_CHECK(d->has_value() == fp8, fp8 ? "an fp8 KV cache needs q/k/v descales"
                                           : "q/k/v descales are for an fp8 KV cache only");
    if (fp8)
      TORCH_CHECK((*d)->is_cuda() && (*d)->device() == query.device() && (*d)->scalar_type() == at::kFloat &&
                      (*d)->is_contiguous() && ((*d)->numel() == 1 || (*d)->numel() == hkv),
                  "descales must be contiguous float32 on the query's device, one per tensor or one per "
                  "KV head (", num(hkv), ")");
  }
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
  p.out_scale = 1.f;
  if (fp8) {
    p.q_descale = q_descale->data_ptr<float>();
    p.k_descale = k_descale->data_ptr<float>();
    p.v_descale = v_descale->data_ptr<float>();
    // Per tensor or per KV head; the three may differ (a head's index times its own stride would
    // need three strides): all per tensor, or all per head.
    TORCH_CHECK(q_descale->numel() == k_descale->numel() && k_descale->numel() == v_descale->numel(),
                "q/k/v descales must all be per tensor or all per KV head");
    p.descale_stride = k_descale->numel() == 1 ? 0 : 1;
    p.out_bf16 = out.scalar_type() == at::kBFloat16;
  }
  if (sinks.has_value()) {
    p.sinks = sinks->data_ptr();
    const at::ScalarType t = sinks->scalar_type();
    p.sinks_dtype = t == at::kBFloat16 ? pod::kSinksBf16 : t == at::kHalf ? pod::kSinksHalf : pod::kSinksFloat;
  }

  const c10::cuda::CUDAGuard guard(query.device());
  // A prefill item taller than the kernel's tile would lose its extra rows: refuse the plan.
  const int64_t tile_rows = prefill_tile_rows(cache_dtype, head_dim);
  TORCH_CHECK(plan_prefill_rows >= 1 && plan_prefill_rows <= tile_rows, "the plan was made for ",
              num(plan_prefill_rows), "-row prefill tiles but this GPU's kernel tile has ", num(tile_rows),
              " rows: make the PodPlanner with prefill_rows=vllm_pod.ops.device_prefill_tile_rows(dtype, head_dim)");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int num_ctas = static_cast<int>(num_sms * ctas_per_sm);
  const cudaError_t e = dispatch<Launch>(cache_dtype, head_dim, p, num_ctas, stream);
  TORCH_CHECK(e == cudaSuccess, "pod_attention launch failed: ", cudaGetErrorString(e));
}

}  // namespace

TORCH_LIBRARY(vllm_pod, m) {
  m.def(
      "pod_attention(Tensor(a!) out, Tensor query, Tensor key_cache, Tensor value_cache, "
      "Tensor block_table, Tensor plan, Tensor(b!) counters, Tensor(c!) workspace, "
      "float softmax_scale, float logits_soft_cap, int sliding_window, Tensor? sinks, "
      "Tensor? q_descale, Tensor? k_descale, Tensor? v_descale, int ctas_per_sm, int num_sms, int plan_prefill_rows) -> ()");
  m.impl("pod_attention", torch::kCUDA, &pod_attention);
  m.def("ctas_per_sm(ScalarType dtype, int head_dim) -> int", &ctas_per_sm);
  m.def("prefill_tile_rows(ScalarType dtype, int head_dim) -> int", &prefill_tile_rows);
}

// Importing vllm_pod._C registers the ops above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
