"""The ceiling that vLLM's paged layout puts on a decode: a kernel that reads exactly the K and V
bytes a batch of decodes reads (each request's blocks through its block table, one KV head per
program, 16-token pages of one head strided by the token's other heads) and does nothing else.
bench --fp8-decode times it beside POD and FA3 on bf16 and fp8 caches."""

import torch
import triton
import triton.language as tl

PAGES_PER_PROGRAM = 16


@triton.jit
def _read_pages(k_ptr, v_ptr, bt_ptr, out_ptr, bt_stride, blk_stride, tok_stride, head_stride,
                PAGES: tl.constexpr, BLOCK: tl.constexpr, D: tl.constexpr):
    req, head, part = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs = tl.arange(0, BLOCK)[:, None] * tok_stride + tl.arange(0, D)[None, :] + head * head_stride
    acc = tl.zeros([BLOCK, D], dtype=tl.float32)
    for i in range(PAGES):
        page = tl.load(bt_ptr + req * bt_stride + part * PAGES + i).to(tl.int64)
        acc += tl.load(k_ptr + page * blk_stride + offs).to(tl.float32)
        acc += tl.load(v_ptr + page * blk_stride + offs).to(tl.float32)
    tl.store(out_ptr + (req * tl.num_programs(1) + head) * tl.num_programs(2) + part, tl.sum(acc))


def paged_read(key_cache: torch.Tensor, value_cache: torch.Tensor, block_table: torch.Tensor,
               context: int):
    """fn() that reads `context` tokens of every request in block_table (all of one length, a
    multiple of 16 pages) from the [blocks, block_size, heads, D] views; fp8 caches are read as bytes."""
    if key_cache.dtype == torch.float8_e4m3fn:
        key_cache, value_cache = key_cache.view(torch.uint8), value_cache.view(torch.uint8)
    num_blocks, block, heads, dim = key_cache.shape
    assert key_cache.stride() == value_cache.stride() and key_cache.stride(3) == 1
    pages = context // block
    assert pages % PAGES_PER_PROGRAM == 0, "context must be a whole number of programs' pages"
    grid = (block_table.shape[0], heads, pages // PAGES_PER_PROGRAM)
    out = torch.empty(grid, dtype=torch.float32, device=key_cache.device)

    def fn():
        _read_pages[grid](key_cache, value_cache, block_table, out, block_table.stride(0),
                          key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
                          PAGES=PAGES_PER_PROGRAM, BLOCK=block, D=dim, num_warps=4, num_stages=4)
    return fn
