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

struct Scheduler {
  const int* plan;
  int* counters;
  int ctas_per_sm;
  int num_prefill, num_decode;
  bool prefill_drained, decode_drained;
  int preferred;

  // Called by thread 0 only.
  __device__ __forceinline__ void start() {
    num_prefill = plan[kNumPrefillItems];
    num_decode = plan[kNumDecodeItems];
    prefill_drained = decode_drained = false;
    const int decode_slots = plan[kDecodeSlotsPerSm];
    const int slot = atomicAdd(counters + kCtrSmSlots + sm_id() % kMaxSmIds, 1);
    preferred = slot % ctas_per_sm < decode_slots ? kDecode : kPrefill;
  }

  // Thread 0: the next item as an index into the plan's item array, or -1 when all work is taken.
  __device__ __forceinline__ int next(int* kind) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      // Scalars rather than arrays indexed by kind: keeps thread 0's state out of local memory.
      const int k = attempt == 0 ? preferred : 1 - preferred;
      bool& drained = k == kPrefill ? prefill_drained : decode_drained;
      if (drained) continue;
      const int i = atomicAdd(counters + kCtrQueueHead + k, 1);
      if (i < (k == kPrefill ? num_prefill : num_decode)) {
        *kind = k;
        return k == kPrefill ? i : num_prefill + i;
      }
      drained = true;
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
