// What the host hands the fused kernel: tensors as raw pointers + strides, and the plan built by
// vllm_pod/plan.py. The layout constants here are mirrored in vllm_pod/plan.py (PLAN_* / ITEM_*).
#pragma once
#include <cstdint>

namespace pod {

// Plan buffer (int32): a header, then prefill items, then decode items (ITEM_INTS ints each).
constexpr int PLAN_HEADER_INTS = 4;
enum PlanHeader { kNumPrefillItems = 0, kNumDecodeItems = 1, kDecodeSlotsPerSm = 2 };

// One unit of work: query rows = n_tok tokens x nh heads of one KV head's GQA group, against the
// keys [kv_start, kv_end) of one request. slot >= 0 marks one KV-split of a merge group.
struct WorkItem {
  int req;         // row of block_table
  int kv_head;
  int h0, nh;      // query heads kv_head*group + [h0, h0+nh)
  int q_start;     // first token (row of query/out)
  int n_tok;
  int q_pos0;      // sequence position of the first token (causal mask)
  int kv_start;    // multiple of the key tile
  int kv_end;
  int slot;        // first workspace row of this split's partial output, or -1 (write out directly)
  int slot_base;   // workspace row of split 0 of the group (splits are consecutive)
  int num_splits;
  int merge_id;    // counter index; the last split to finish merges the group
  // Zero from the planner; trace builds write them (trace.cuh): blockIdx * kMaxSmIds + SM id, and
  // the item's start and end (globaltimer, low 32 bits).
  int trace_cta_sm, trace_start, trace_end;
};
constexpr int ITEM_INTS = sizeof(WorkItem) / sizeof(int);
static_assert(ITEM_INTS == 16, "plan.py assumes 16 ints per item");

// Scheduler counters (int32, zero at allocation, re-zeroed by the kernel's last CTA).
constexpr int kCtrQueueHead = 0;  // [0] prefill head, [1] decode head
constexpr int kCtrDone = 2;
constexpr int kCtrSmSlots = 4;     // per-SM arrival counters start here
constexpr int kMaxSmIds = 1024;    // bound on %nsmid we index by
constexpr int kCtrMerge = kCtrSmSlots + kMaxSmIds;  // merge-group counters start here

struct PodParams {
  const void* q;      // [tokens, Hq, D]
  const void* k;      // paged: block, token-in-block, head strides (elements)
  const void* v;
  void* out;          // [tokens, Hq, D]
  const int* block_table;
  const int* plan;
  int* counters;
  float* partial_o;   // [workspace rows, D]
  float* partial_lse; // [workspace rows], log2 domain

  int64_t q_stride_tok, q_stride_head;
  int64_t o_stride_tok, o_stride_head;
  int64_t k_stride_blk, k_stride_tok, k_stride_head;
  int64_t v_stride_blk, v_stride_tok, v_stride_head;
  int64_t bt_stride;

  int group;            // Hq / Hkv
  // The tensors' head dim: the build's D, or less (96 runs on the D = 128 build): columns past it
  // are zero-filled on load, so they add nothing to the scores and give zero outputs, never stored.
  int head_dim;
  int log2_block_size;
  float scale_log2;     // softmax_scale * log2(e)
  int ctas_per_sm;

  // Optional score modifications (vLLM's FLASH_ATTN semantics). Soft-cap: a raw score s becomes
  // softcap_out * tanh(s * softcap_in) (softcap_in = scale / cap, softcap_out = cap / scale, so
  // scale_log2 still applies); softcap_in = 0 without it.
  float softcap_in, softcap_out;
  // Sliding window: a row at position pos sees keys [pos - window_left, pos]; kNoWindow without.
  int window_left;
  // Attention sinks: one logit per query head (natural log units, of sinks_dtype) that joins each
  // row's softmax denominator; null without.
  const void* sinks;
  int sinks_dtype;

  // fp8 KV cache (fp8 instantiations only): vLLM's descales, one float per KV head at
  // descale_stride (0: one per tensor); scores are multiplied by q x k, outputs by v. The output's
  // dtype is the model's: bf16 when out_bf16, else fp16.
  const float* q_descale;
  const float* k_descale;
  const float* v_descale;
  int descale_stride;
  int out_bf16;
  // The item's v descale, which finalize folds into each row's normaliser; 1 where no fp8 cache.
  float out_scale;
};
constexpr int kNoWindow = 1 << 30;  // pos - kNoWindow stays below every key without overflow
enum SinksDtype { kSinksFloat = 0, kSinksBf16 = 1, kSinksHalf = 2 };

}  // namespace pod
