"""The GPU planner's kernels compile for a Hopper GPU (sm_90) without one: triton's own compiler
and the ptxas it ships, so that CI catches what its interpreter lets pass (types, loop-carried
values, block shapes). Block sizes: the engine benchmark's 58x256 -> 288 on 32 GPUs and the
service's largest request (1024 experts, 2048 slots on 256 GPUs); the swap kernels' register use
(ptxas -v) at the common shapes. About 20 s here."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

triton = pytest.importorskip("triton", reason="the GPU planner needs triton")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("triton runs interpreted in this process", allow_module_level=True)

SIGNATURES = {
    "_replicate": dict(weight_ptr="*fp32", count_ptr="*i32", capped_ptr="*i32",
                       num_experts="i32", extra="i32", num_packs="i32"),
    "_lpt": dict(item_ptr="*fp32", skip_ptr="*i32", pack_ptr="*i32", rank_ptr="*i32",
                 num_items="i32", num_packs="i32", cap="i32"),
    "_refine": dict(weight_ptr="*fp64", expert_ptr="*i32", limit_ptr="*i32", target_ptr="*fp64",
                    moves_ptr="*i32", num_packs="i32", cap="i32", max_moves="i32",
                    pair_loops="i32", pair_all="i32"),
    "_balance": dict(weight_ptr="*fp64", expert_ptr="*i32", limit_ptr="*i32", order_ptr="*i32",
                     run_ptr="*i32", num_packs="i32", cap="i32"),
}
BLOCKS = [
    ("_replicate", dict(BLOCK_E=256)), ("_replicate", dict(BLOCK_E=1024)),
    ("_lpt", dict(BLOCK_M=32)), ("_lpt", dict(BLOCK_M=256)),
    ("_refine", dict(BLOCK_M=32, BLOCK_C=16, PAIR_X=1)),
    ("_refine", dict(BLOCK_M=256, BLOCK_C=8, PAIR_X=1)),
    ("_refine", dict(BLOCK_M=128, BLOCK_C=4, PAIR_X=4)),
    ("_balance", dict(BLOCK_M=128, BLOCK_C=8, PAIR_X=1)),
    ("_balance", dict(BLOCK_M=128, BLOCK_C=4, PAIR_X=4)),
]


@pytest.mark.parametrize("name, blocks", BLOCKS, ids=[f"{n}{b}" for n, b in BLOCKS])
def test_kernel_compiles_for_sm90(name, blocks):
    from eplb_server.engine.gpu import kernels

    assert list(SIGNATURES[name]) + list(blocks) == getattr(kernels, name).arg_names
    compiled = _compiled(name, blocks, num_warps=8)
    assert compiled.asm["cubin"]  # ptxas accepted the kernel
    # rounded as the interpreter rounds: no multiply and add fused into one (with triton's
    # default, _refine held two FMAs)
    assert "fma." not in compiled.asm["ptx"] and "mad.f" not in compiled.asm["ptx"]


# Swap kernels at the planner's common shapes (packs, slots per pack: 32 GPUs x 9-16 slots, the
# GPU path from 9 per GPU; 72 -> 128 x 4; 64 x 8), launched as the planner launches them, keep
# their blocks in registers: at most this many bytes a thread of spill stores (the whole C^4
# 2-for-2 block spilled 7,044 at 32 x 16; each spilled byte is local-memory traffic per step).
SPILL_LIMIT = 256
COMMON_SHAPES = [("_refine", 32, 16), ("_refine", 72, 4), ("_refine", 64, 8), ("_balance", 72, 4),
                 ("_balance", 64, 8)]


@pytest.mark.parametrize("name, packs, cap", COMMON_SHAPES,
                         ids=[f"{n}-{p}x{c}" for n, p, c in COMMON_SHAPES])
def test_swap_kernel_keeps_its_blocks_in_registers(name, packs, cap, tmp_path):
    from triton.backends.nvidia.compiler import get_ptxas

    from eplb_server.engine.gpu.packing import swap_blocks

    blocks = swap_blocks(packs, cap, name)
    compiled = _compiled(name, blocks, num_warps=blocks.pop("num_warps"))
    ptx = tmp_path / "kernel.ptx"
    ptx.write_text(compiled.asm["ptx"])
    report = subprocess.run([get_ptxas(90).path, "-v", "-arch=sm_90a", str(ptx), "-o",
                             str(tmp_path / "kernel.cubin")], capture_output=True, text=True,
                            check=True).stderr
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", report)]
    assert spills and max(spills) <= SPILL_LIMIT, report


def _compiled(name, blocks, num_warps):
    """Kernel `name` of the GPU planner compiled for sm_90 with these block sizes and warps and
    the planner's launch options (kernels.EXACT)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from eplb_server.engine.gpu import kernels

    signature = {**SIGNATURES[name], **{k: "constexpr" for k in blocks}}
    return triton.compile(ASTSource(getattr(kernels, name), signature, blocks),
                          target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, **kernels.EXACT})
