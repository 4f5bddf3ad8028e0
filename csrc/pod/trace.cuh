// Diagnosis builds (-DPOD_TRACE=1): each item's CTA, SM and start/end times are written into the
// item's spare ints in the plan buffer, where benchmarks/kernel/trace_items.py reads them back. Shows
// what the aggregate profile cannot: per-item durations (a CTA's rate against the item's size) and
// the timeline (when decodes drain, how long the tail is). Off by default: no code at all.
#pragma once
#include "params.cuh"
#include "ptx.cuh"

#ifndef POD_TRACE
#define POD_TRACE 0
#endif

namespace pod {

// Low 32 bits of the GPU-wide nanosecond timer (comparable across SMs; a launch lasts far less
// than the 4.3 s wrap).
__device__ __forceinline__ uint32_t trace_clock() {
  if constexpr (POD_TRACE) {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
    return static_cast<uint32_t>(t);
  } else {
    return 0;
  }
}

// Called by every thread of a team after an item; its leader records it.
__device__ __forceinline__ void trace_item(const PodParams& p, int index, uint32_t start, bool leader) {
  if constexpr (POD_TRACE) {
    if (!leader) return;
    WorkItem* item = reinterpret_cast<WorkItem*>(const_cast<int*>(p.plan) + PLAN_HEADER_INTS) + index;
    item->trace_cta_sm = static_cast<int>(blockIdx.x * kMaxSmIds + sm_id());
    item->trace_start = static_cast<int>(start);
    item->trace_end = static_cast<int>(trace_clock());
  }
}

}  // namespace pod
