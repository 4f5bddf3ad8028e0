// POD's SM-aware assignment, as a persistent scheduler: the grid holds ctas_per_sm CTAs per SM; each
// CTA reads its SM id, takes an arrival slot on that SM, and from it a preferred kind of work
// (decode for the first decode_slots_per_sm arrivals, prefill for the rest). It pulls items of its
// preferred kind and falls back to the other kind once that queue is empty. So every SM runs prefill
// and decode tiles side by side while both exist, in the mix the plan chose, and no SM idles while
// any work is left. SM ids are used only as counter indices (they need not be contiguous).
#pragma once
#include "params.cuh"
#include "ptx.cuh"

namespace pod {

enum Kind : int { kPrefill = 0, kDecode = 1 };

// Item `index` of the plan (what the scheduler's take/next return).
__device__ __forceinline__ const WorkItem& plan_item(const int* plan, int index) {
  return reinterpret_cast<const WorkItem*>(plan + PLAN_HEADER_INTS)[index];
}

struct Scheduler {
  const int* plan;
  int* counters;
  int ctas_per_sm;
  int num_prefill, num_decode;
  bool prefill_drained, decode_drained;
  int preferred;

  // A team leader that takes items of one kind only (the warp-specialized kernel's roles).
  __device__ __forceinline__ void start_queues() {
    num_prefill = plan[kNumPrefillItems];
    num_decode = plan[kNumDecodeItems];
    prefill_drained = decode_drained = false;
  }

  // The CTA's thread 0 in the two-CTA kernel: the queues and this CTA's preferred kind.
  __device__ __forceinline__ void start() {
    start_queues();
    const int decode_slots = plan[kDecodeSlotsPerSm];
    const int slot = atomicAdd(counters + kCtrSmSlots + sm_id() % kMaxSmIds, 1);
    preferred = slot % ctas_per_sm < decode_slots ? kDecode : kPrefill;
  }

  // The next item of kind k as an index into the plan's item array, or -1 once that queue is empty.
  __device__ __forceinline__ int take(int k) {
    // Scalars rather than arrays indexed by kind: keeps the leader's state out of local memory.
    bool& drained = k == kPrefill ? prefill_drained : decode_drained;
    if (drained) return -1;
    const int i = atomicAdd(counters + kCtrQueueHead + k, 1);
    if (i < (k == kPrefill ? num_prefill : num_decode)) return k == kPrefill ? i : num_prefill + i;
    drained = true;
    return -1;
  }

  // Thread 0: the next item of the preferred kind, else of the other; -1 when all work is taken.
  __device__ __forceinline__ int next(int* kind) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      const int k = attempt == 0 ? preferred : 1 - preferred;
      const int i = take(k);
      if (i >= 0) {
        *kind = k;
        return i;
      }
    }
    return -1;
  }

  // Thread 0, once the CTA is done: the last CTA of the grid re-zeroes the scheduler's counters
  // (every other CTA has made its final queue and slot updates before counting itself done).
  __device__ __forceinline__ void finish() {
    __threadfence();
    if (atomicAdd(counters + kCtrDone, 1) != int(gridDim.x) - 1) return;
    counters[kCtrQueueHead + kPrefill] = 0;
    counters[kCtrQueueHead + kDecode] = 0;
    counters[kCtrDone] = 0;
    const int n = min(int(sm_id_bound()), kMaxSmIds);
    for (int i = 0; i < n; ++i) counters[kCtrSmSlots + i] = 0;
  }
};

}  // namespace pod
