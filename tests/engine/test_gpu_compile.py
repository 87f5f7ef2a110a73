"""The GPU planner's kernels compile for a Hopper GPU (sm_90) without one: triton's own compiler
and the ptxas it ships, so that CI catches what its interpreter lets pass (types, loop-carried
values, block shapes). Block sizes: the engine benchmark's 58x256 -> 288 on 32 GPUs and the
service's largest request (1024 experts, 2048 slots on 256 GPUs). About 10 s here."""

from __future__ import annotations

import os

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
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from eplb_server.engine.gpu import kernels

    fn = getattr(kernels, name)
    signature = {**SIGNATURES[name], **{k: "constexpr" for k in blocks}}
    assert list(signature) == fn.arg_names
    compiled = triton.compile(ASTSource(fn, signature, blocks), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": 8, **kernels.EXACT})
    assert compiled.asm["cubin"]  # ptxas accepted the kernel
    # rounded as the interpreter rounds: no multiply and add fused into one (with triton's
    # default, _refine held two FMAs)
    assert "fma." not in compiled.asm["ptx"] and "mad.f" not in compiled.asm["ptx"]
