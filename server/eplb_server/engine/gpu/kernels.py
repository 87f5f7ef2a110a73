"""Triton kernels of the GPU planner; each program solves one independent problem (a layer, or a
layer's node). TRITON_INTERPRET is read when triton is imported (its own library functions are
jit-decorated then), so interpreted and compiled kernels cannot share a process: the engine
imports this module only when a plan runs on the GPU path."""

import triton
import triton.language as tl


# Launch options of every kernel: no fused multiply-add (triton 3.9 fuses by default, and
# _refine's `w - 0.5 * gap` became an FMA), so that a GPU rounds as the interpreter and the CPU
# engine do and picks the same swaps.
EXACT = dict(enable_fp_fusion=False)


@triton.jit(do_not_specialize=["num_experts", "extra", "num_packs"])
def _replicate(weight_ptr, count_ptr, capped_ptr, num_experts, extra, num_packs,
               BLOCK_E: tl.constexpr):
    """Adams apportionment as the reference does it: each of `extra` replicas goes to the expert
    with the largest float32 load per replica, the lowest index among equals; and the same with
    no expert above num_packs replicas while one is below (more than one per pack never lowers
    an expert's load on its heaviest pack; engine.packing.capped_counts).

    weight: [B, n] float32 -> count, capped: [B, n] int32
    """
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    mask = offs < num_experts
    w = tl.load(weight_ptr + row * num_experts + offs, mask=mask, other=0.0)
    count = tl.full([BLOCK_E], 1, tl.int32)
    capped = tl.full([BLOCK_E], 1, tl.int32)
    for _ in range(extra):
        piece = tl.where(mask, tl.div_rn(w, count.to(tl.float32)), -1.0)
        count += (offs == tl.argmax(piece, 0)).to(tl.int32)
        piece = tl.where(mask & (capped < num_packs), tl.div_rn(w, capped.to(tl.float32)), -1.0)
        capped += (offs == tl.argmax(piece, 0)).to(tl.int32)
    tl.store(count_ptr + row * num_experts + offs, count, mask=mask)
    tl.store(capped_ptr + row * num_experts + offs, capped, mask=mask)


@triton.jit(do_not_specialize=["num_items", "num_packs", "cap"])
def _lpt(item_ptr, skip_ptr, pack_ptr, rank_ptr, num_items, num_packs, cap,
         BLOCK_M: tl.constexpr):
    """Greedy LPT with cardinality as the reference packs: each item, heaviest first, to the
    lightest pack with room (float32 loads, the lowest index among equals).

    item: [B, n] float32, sorted descending per row; skip: [B] int32 (rows left as they are)
    -> pack, rank (order of arrival): [B, n] int32
    """
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_M)
    valid = offs < num_packs
    loads = tl.zeros([BLOCK_M], tl.float32)
    counts = tl.zeros([BLOCK_M], tl.int32)
    for i in range(num_items * (1 - tl.load(skip_ptr + row))):
        w = tl.load(item_ptr + row * num_items + i)
        key = tl.where(valid & (counts < cap), loads, float("inf"))
        pack = tl.argmin(key, 0)
        hit = offs == pack
        rank = tl.sum(tl.where(hit, counts, 0), 0)
        loads += tl.where(hit, w, 0.0)
        counts += hit.to(tl.int32)
        tl.store(pack_ptr + row * num_items + i, pack.to(tl.int32))
        tl.store(rank_ptr + row * num_items + i, rank)


@triton.jit(do_not_specialize=["num_packs", "cap", "max_moves", "pair_loops", "pair_all"])
def _refine(weight_ptr, expert_ptr, limit_ptr, target_ptr, moves_ptr, num_packs, cap, max_moves,
            pair_loops, pair_all, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Swap refinement of one packing: while the heaviest pack is above the target, the 1-for-1
    swap between it and any pack that lowers the pair's peak most; where none does, the best
    2-for-2 swap with every pack (pair_all) or the lightest (pair_loops = 1; 0: none). A pack
    takes no more replicas of an expert than its fair share (limit = ceil(count / packs)).
    Every accepted move lowers the heaviest of the two packs below the old peak, so the peak
    never rises.

    weight [B, m, c] float64, expert / limit [B, m, c] int32 (updated in place), target [B]
    float64 -> moves [B] int32 (accepted swaps)
    """
    row = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    valid = (rows[:, None] < num_packs) & (cols[None, :] < cap)
    base = row * num_packs * cap + rows[:, None] * cap + cols[None, :]
    pw = tl.load(weight_ptr + base, mask=valid, other=0.0)
    pe = tl.load(expert_ptr + base, mask=valid, other=-1)
    pl = tl.load(limit_ptr + base, mask=valid, other=0)
    target = tl.load(target_ptr + row)
    row_valid = rows < num_packs
    col_valid = cols < cap
    inf = float("inf")
    moves = tl.program_id(0) * 0
    go = moves < max_moves
    while go:
        loads = tl.sum(pw, 1)
        top = tl.max(tl.where(row_valid, loads, -inf), 0)
        heavy = tl.argmax(tl.where(row_valid, loads, -inf), 0)
        is_heavy = rows[:, None] == heavy
        hw = tl.sum(tl.where(is_heavy, pw, 0.0), 0)
        he = tl.sum(tl.where(is_heavy, pe, 0), 0)
        hl = tl.sum(tl.where(is_heavy, pl, 0), 0)
        he = tl.where(col_valid, he, -2)
        # 1-for-1: [o, b, a], slot b of pack o against slot a of the heaviest pack
        delta = hw[None, None, :] - pw[:, :, None]
        gap = (top - loads)[:, None, None]
        eq = (pe[:, :, None] == he[None, None, :]).to(tl.int32)
        held_a = tl.sum(eq, 1)  # [o, a]: replicas of a's expert in pack o
        held_b = tl.sum(eq, 2)  # [o, b]: replicas of b's expert in the heaviest pack
        fits = ((held_a[:, None, :] - eq) < hl[None, None, :]) \
            & ((held_b[:, :, None] - eq) < pl[:, :, None])
        ok = (delta > 0.0) & (delta < gap) & fits & valid[:, :, None] \
            & col_valid[None, None, :]
        objective = tl.where(ok, tl.maximum(top - delta, loads[:, None, None] + delta), inf)
        flat = tl.reshape(objective, (BLOCK_M * BLOCK_C * BLOCK_C,))
        best = tl.min(flat, 0)
        where = tl.argmin(flat, 0)
        threshold = top - 1e-12 * tl.abs(top)
        single = best < threshold
        o_best = where // (BLOCK_C * BLOCK_C)
        b1_best = (where // BLOCK_C) % BLOCK_C
        a1_best = where % BLOCK_C
        b2_best = o_best * 0 - 1
        a2_best = o_best * 0 - 1
        if pair_loops > 0:
            lightest = tl.argmin(tl.where(row_valid, loads, inf), 0)
            pair_best = inf + top * 0.0
            for k in range(tl.where(single, 0, pair_loops)):
                o = tl.where(pair_all != 0, k, lightest)
                is_o = rows[:, None] == o
                ow = tl.sum(tl.where(is_o, pw, 0.0), 0)
                oe = tl.where(col_valid, tl.sum(tl.where(is_o, pe, 0), 0), -3)
                ol = tl.sum(tl.where(is_o, pl, 0), 0)
                low = tl.sum(tl.where(rows == o, loads, 0.0), 0)
                cu = tl.sum((oe[:, None] == he[None, :]).to(tl.int32), 1)  # [b]: in heavy
                cy = tl.sum((he[:, None] == oe[None, :]).to(tl.int32), 1)  # [a]: in pack o
                for a1 in range(cap):
                    x = tl.sum(tl.where(cols == a1, he, 0), 0)
                    xw = tl.sum(tl.where(cols == a1, hw, 0.0), 0)
                    xl = tl.sum(tl.where(cols == a1, hl, 0), 0)
                    cx = tl.sum(tl.where(cols == a1, cy, 0), 0)
                    y = he[:, None, None]
                    u = oe[None, :, None]
                    v = oe[None, None, :]
                    d = xw + hw[:, None, None] - ow[None, :, None] - ow[None, None, :]
                    held_x = cx - (u == x).to(tl.int32) - (v == x).to(tl.int32) + 1 \
                        + (y == x).to(tl.int32)
                    held_y = cy[:, None, None] - (u == y).to(tl.int32) - (v == y).to(tl.int32) \
                        + (x == y).to(tl.int32) + 1
                    held_u = cu[None, :, None] - (x == u).to(tl.int32) - (y == u).to(tl.int32) \
                        + 1 + (v == u).to(tl.int32)
                    held_v = cu[None, None, :] - (x == v).to(tl.int32) - (y == v).to(tl.int32) \
                        + (u == v).to(tl.int32) + 1
                    a2 = cols[:, None, None]
                    b1 = cols[None, :, None]
                    b2 = cols[None, None, :]
                    ok2 = (a2 > a1) & (a2 < cap) & (b1 < b2) & (b2 < cap) \
                        & (d > 0.0) & (d < top - low) & (held_x <= xl) \
                        & (held_y <= hl[:, None, None]) & (held_u <= ol[None, :, None]) \
                        & (held_v <= ol[None, None, :])
                    obj2 = tl.where(ok2, tl.maximum(top - d, low + d), inf)
                    flat2 = tl.reshape(obj2, (BLOCK_C * BLOCK_C * BLOCK_C,))
                    cand = tl.min(flat2, 0)
                    at = tl.argmin(flat2, 0)
                    better = (cand < pair_best) & (~single)
                    pair_best = tl.where(better, cand, pair_best)
                    o_best = tl.where(better, o, o_best)
                    a1_best = tl.where(better, a1, a1_best)
                    a2_best = tl.where(better, at // (BLOCK_C * BLOCK_C), a2_best)
                    b1_best = tl.where(better, (at // BLOCK_C) % BLOCK_C, b1_best)
                    b2_best = tl.where(better, at % BLOCK_C, b2_best)
            best = tl.where(single, best, pair_best)
        accept = (best < threshold) & (top > target)
        # the swap: heaviest's a1 (a2) <-> pack o's b1 (b2); a2 = b2 = -1 for 1-for-1, o = -1
        # for none (a scalar & a block is avoided: the interpreter's broadcast rejects it)
        o_best = tl.where(accept, o_best, -1)
        at_o = rows[:, None] == o_best
        take1 = at_o & (cols[None, :] == b1_best)
        take2 = at_o & (cols[None, :] == b2_best)
        give1 = is_heavy & (cols[None, :] == tl.where(accept, a1_best, -1))
        give2 = is_heavy & (cols[None, :] == tl.where(accept, a2_best, -1))
        w_b1 = tl.sum(tl.sum(tl.where(take1, pw, 0.0), 1), 0)
        w_b2 = tl.sum(tl.sum(tl.where(take2, pw, 0.0), 1), 0)
        w_a1 = tl.sum(tl.sum(tl.where(give1, pw, 0.0), 1), 0)
        w_a2 = tl.sum(tl.sum(tl.where(give2, pw, 0.0), 1), 0)
        e_b1 = tl.sum(tl.sum(tl.where(take1, pe, 0), 1), 0)
        e_b2 = tl.sum(tl.sum(tl.where(take2, pe, 0), 1), 0)
        e_a1 = tl.sum(tl.sum(tl.where(give1, pe, 0), 1), 0)
        e_a2 = tl.sum(tl.sum(tl.where(give2, pe, 0), 1), 0)
        l_b1 = tl.sum(tl.sum(tl.where(take1, pl, 0), 1), 0)
        l_b2 = tl.sum(tl.sum(tl.where(take2, pl, 0), 1), 0)
        l_a1 = tl.sum(tl.sum(tl.where(give1, pl, 0), 1), 0)
        l_a2 = tl.sum(tl.sum(tl.where(give2, pl, 0), 1), 0)
        pw = tl.where(take1, w_a1, tl.where(take2, w_a2, tl.where(
            give1, w_b1, tl.where(give2, w_b2, pw))))
        pe = tl.where(take1, e_a1, tl.where(take2, e_a2, tl.where(
            give1, e_b1, tl.where(give2, e_b2, pe))))
        pl = tl.where(take1, l_a1, tl.where(take2, l_a2, tl.where(
            give1, l_b1, tl.where(give2, l_b2, pl))))
        moves += accept.to(tl.int32)
        go = accept & (moves < max_moves)
    tl.store(expert_ptr + base, pe, mask=valid)
    tl.store(weight_ptr + base, pw, mask=valid)
    tl.store(moves_ptr + row, moves)
