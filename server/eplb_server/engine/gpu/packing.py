"""Packing given replica counts on the GPU, batched over problems: the LPT and differencing
starts, swap refinement and pairwise balancing as Triton kernels (one program per problem)."""

from __future__ import annotations

import torch

from ..packing import (BALANCE_PAIRS_GAP, FEW_SLOTS_REFINE_TOLERANCE, PAIR_SWAP_ALL_MAX_CAP,
                       REFINE_TOLERANCE, SMALL_PACK_MAX_CAP)
from ..refined import MAX_MOVES, MAX_MOVES_PER_ITEM

from . import kernels
from .differencing import differencing


def pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def pair_chunk(block_c: int) -> int:
    """First slots per block of the 2-for-2 search (`kernels._pair_trades`): blocks of at most
    512 trades, all first slots at once where C <= 4 (fewer steps for the interpreter). ptxas
    for sm_90: `_refine` at 32 GPUs of 16 slots spilled 7,044 bytes a thread with the whole
    C^4 block, 184 with one first slot per block."""
    return max(1, min(block_c, 512 // block_c ** 3))


def swap_blocks(packs: int, cap: int, kernel: str) -> dict:
    """Block sizes and warps of `kernels._refine` or `kernels._balance` for packs x cap: from
    the largest block each forms (_refine's 1-for-1 search M x C^2, _balance's packing M x C,
    and the 2-for-2 search's PAIR_X x C^3)."""
    block_m, block_c = pow2(packs), pow2(cap)
    chunk = pair_chunk(block_c)
    largest = block_m * block_c * (block_c if kernel == "_refine" else 1)
    return dict(BLOCK_M=block_m, BLOCK_C=block_c, PAIR_X=chunk,
                num_warps=warps(max(largest, chunk * block_c ** 3)))


def warps(elements: int) -> int:
    """Warps for a kernel whose largest block holds `elements` (ptxas for sm_90: `_refine` at 64
    GPUs of 8 slots spilled with 4 warps, not with 8)."""
    return 4 if elements <= 2048 else 8 if elements <= 4096 else 16


def lpt(items: torch.Tensor, num_packs: int, skip: torch.Tensor | None = None):
    """items [B, n] float32, each row descending; skip [B] bool: rows left unpacked (all in pack
    0) -> (pack, rank) [B, n] int32"""
    rows, n = items.shape
    pack = torch.zeros((rows, n), dtype=torch.int32, device=items.device)
    rank = torch.zeros_like(pack)
    skip = torch.zeros(rows, dtype=torch.int32, device=items.device) if skip is None \
        else skip.to(torch.int32)
    kernels._lpt[(rows,)](items, skip, pack, rank, n, num_packs, n // num_packs,
                          BLOCK_M=pow2(num_packs), **kernels.EXACT)
    return pack, rank


def pack_counts(w32, w64, counts, slots, packs, skip, enough):
    """Packs counts [B, n] replicas of each problem's experts (loads w32, w64 [B, n]) onto
    `packs` GPUs of slots / packs each, as the CPU engine's `_replicas_packed`: above two slots
    per GPU, the lower of the LPT and the differencing start refined (`_improve`), and up to
    PAIR_SWAP_ALL_MAX_CAP per GPU the other too where the first stays BALANCE_PAIRS_GAP above
    its bound; the lower plan kept, the first among equals. skip [B]: rows left unpacked;
    enough [B]: a peak the row's plan exceeds anyway (0: none).
    -> (pack_expert [B, m, c] int32, peak [B], inf where skip)"""
    rows, n = counts.shape
    device = w64.device
    cap = slots // packs
    positions = torch.arange(slots, device=device).expand(rows, slots).contiguous()
    item = torch.searchsorted(counts.long().cumsum(1), positions, right=True)  # [B, S] expert
    item_count = counts.gather(1, item)
    piece32 = w32.gather(1, item) / item_count.to(torch.float32)
    piece64 = w64.gather(1, item) / item_count.to(torch.float64)
    piece32, order = piece32.sort(dim=1, descending=True, stable=True)
    item, piece64 = item.gather(1, order), piece64.gather(1, order)
    starts = [lpt(piece32.contiguous(), packs, skip)[0].long()]
    if cap > 2:  # two per pack: LPT already pairs largest with smallest, optimal for the counts
        starts.append(differencing(piece64, packs))
    k = len(starts)
    by_pack = (torch.cat(starts) * slots + positions.repeat(k, 1)).argsort(1)
    pack_expert = item.repeat(k, 1).gather(1, by_pack).view(k * rows, packs, cap) \
        .to(torch.int32).contiguous()
    pack_weight = piece64.repeat(k, 1).gather(1, by_pack).view(k * rows, packs, cap).contiguous()
    peak = pack_weight.sum(-1).amax(-1).view(k, rows)
    if cap > 2:
        limit = ((counts + packs - 1) // packs).repeat(k, 1) \
            .gather(1, pack_expert.view(k * rows, -1).long())
        limit = limit.view(k * rows, packs, cap).to(torch.int32).contiguous()
        few = cap <= PAIR_SWAP_ALL_MAX_CAP
        bound = torch.maximum(w64.sum(1) / packs, (w64 / counts).max(1).values)
        bounds = bound.repeat(k)
        tolerance = FEW_SLOTS_REFINE_TOLERANCE if few else REFINE_TOLERANCE
        target = torch.where(skip, torch.inf, torch.maximum(bound * (1.0 + tolerance), enough))
        # the lower start first (LPT among equals up to PAIR_SWAP_ALL_MAX_CAP per GPU, else
        # differencing), LPT alone where it peaks at or below `enough`, as the CPU engine
        lpt_only = peak[0] <= enough
        kk_first = ~lpt_only & ((peak[1] < peak[0]) if few else (peak[1] <= peak[0]))
        first = torch.stack([~kk_first, kk_first])
        _improve(pack_weight, pack_expert, limit, torch.where(first, target, torch.inf),
                 bounds, slots, packs)
        peak = pack_weight.sum(-1).amax(-1).view(k, rows)
        first_peak = torch.where(kk_first, peak[1], peak[0])
        again = torch.zeros_like(first)
        if few:  # the other start where the first stays BALANCE_PAIRS_GAP above its bound
            good = torch.maximum(bound * (1.0 + BALANCE_PAIRS_GAP), enough)
            again = ~first & ~lpt_only & (first_peak > good)
            _improve(pack_weight, pack_expert, limit, torch.where(again, target, torch.inf),
                     bounds, slots, packs)
            peak = pack_weight.sum(-1).amax(-1).view(k, rows)
        other_peak = torch.where(again, peak, torch.inf).amin(0)
        best = torch.where(other_peak < first_peak, (~kk_first).long(), kk_first.long())
    else:
        best = torch.zeros(rows, dtype=torch.long, device=device)
    pack_expert = pack_expert.view(k, rows, packs, cap) \
        .gather(0, best.view(1, rows, 1, 1).expand(1, rows, packs, cap))[0]
    return pack_expert, torch.where(skip, torch.inf, peak.gather(0, best[None])[0])


def _improve(pack_weight, pack_expert, limit, target, bound, slots, packs):
    """Refinement of pack_weight, pack_expert, limit [B, m, c] (in place) down to target [B]
    (inf: rows left as they are); up to PAIR_SWAP_ALL_MAX_CAP per GPU, where a packing stays
    BALANCE_PAIRS_GAP above bound [B], pairwise balancing and refinement again."""
    rows, _, cap = pack_weight.shape
    target = target.reshape(rows)
    _refine(pack_weight, pack_expert, limit, target, slots, packs, cap)
    if cap <= PAIR_SWAP_ALL_MAX_CAP:
        loads = pack_weight.sum(-1)
        run = loads.amax(1) > torch.maximum(bound * (1.0 + BALANCE_PAIRS_GAP), target)
        by_load = loads.sort(dim=1, descending=True, stable=True).indices
        kernels._balance[(rows,)](
            pack_weight, pack_expert, limit, by_load.to(torch.int32).contiguous(),
            run.to(torch.int32), packs, cap, **swap_blocks(packs, cap, "_balance"),
            **kernels.EXACT)
        _refine(pack_weight, pack_expert, limit, torch.where(run, target, torch.inf), slots,
                packs, cap)


def _refine(pack_weight, pack_expert, limit, target, slots, packs, cap):
    """The `_refine` kernel over every row of pack_weight, pack_expert, limit [B, m, c] (updated
    in place) down to target [B] (inf: left as it is)."""
    rows = pack_weight.shape[0]
    pair_loops = packs if cap <= PAIR_SWAP_ALL_MAX_CAP else 1 if cap <= SMALL_PACK_MAX_CAP \
        else 0
    moves = torch.empty(rows, dtype=torch.int32, device=pack_weight.device)
    kernels._refine[(rows,)](
        pack_weight, pack_expert, limit, target.contiguous(), moves, packs, cap,
        min(MAX_MOVES_PER_ITEM * slots, MAX_MOVES), pair_loops, int(cap <= PAIR_SWAP_ALL_MAX_CAP),
        **swap_blocks(packs, cap, "_refine"), **kernels.EXACT)
