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
            pair_loops, pair_all, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
            PAIR_X: tl.constexpr):
    """Swap refinement of one packing, as engine.packing.refine: while the heaviest pack is
    above the target, the 1-for-1 swap between it and another pack that lowers the pair's peak
    most (the CPU engine's candidates and order: the two slots that bracket halving the gap,
    packs lightest first up to the first whose best swap so far brings both packs to the
    second-heaviest load, the mean or the target); where none does, the best 2-for-2 swap with
    every pack (pair_all) or the lightest (pair_loops = 1; 0: none). A pack
    takes no more replicas of an expert than its fair share (limit = ceil(count / packs)).
    Every accepted move lowers the heaviest of the two packs below the old peak, so the peak
    never rises.

    weight [B, m, c] float64, expert / limit [B, m, c] int32 (updated in place), target [B]
    float64 -> moves [B] int32 (accepted swaps)
    """
    row = tl.program_id(0).to(tl.int64)
    rows, cols, valid, base, pw, pe, pl = _load_packing(
        weight_ptr, expert_ptr, limit_ptr, row, num_packs, cap, BLOCK_M, BLOCK_C)
    target = tl.load(target_ptr + row)
    row_valid = rows < num_packs
    col_valid = cols < cap
    inf = float("inf")
    moves = tl.program_id(0) * 0
    mean = tl.sum(tl.sum(pw, 1), 0) / num_packs
    go = (moves < max_moves) & (tl.max(tl.where(row_valid, tl.sum(pw, 1), -inf), 0) > target)
    while go:
        loads = tl.sum(pw, 1)
        top = tl.max(tl.where(row_valid, loads, -inf), 0)
        heavy = tl.argmax(tl.where(row_valid, loads, -inf), 0)
        hw, he, hl = _pack_of(pw, pe, pl, rows, col_valid, heavy, -2)
        # 1-for-1: [o, b, a], slot b of pack o against slot a of the heaviest pack
        delta = hw[None, None, :] - pw[:, :, None]
        gap = (top - loads)[:, None, None]
        eq = (pe[:, :, None] == he[None, None, :]).to(tl.int32)
        held_a = tl.sum(eq, 1)  # [o, a]: replicas of a's expert in pack o
        held_b = tl.sum(eq, 2)  # [o, b]: replicas of b's expert in the heaviest pack
        fits = ((held_a[:, None, :] - eq) < hl[None, None, :]) \
            & ((held_b[:, :, None] - eq) < pl[:, :, None])
        near = _nearest_halving(pw, valid, cols, hw[None, None, :] - 0.5 * gap)
        ok = (delta > 0.0) & (delta < gap) & fits & near & valid[:, :, None] \
            & col_valid[None, None, :]
        objective = tl.where(ok, tl.maximum(top - delta, loads[:, None, None] + delta), inf)
        # As the CPU engine: packs lightest first, stopping after the first pack at which the
        # best swap so far brings both packs to `enough`.
        second = tl.max(tl.where(row_valid & (rows != heavy), loads, -inf), 0)
        enough = tl.maximum(tl.maximum(second, mean), target)
        reached = row_valid & (tl.min(tl.min(objective, 2), 1) <= enough)
        last = tl.argmin(tl.where(reached, loads, inf), 0)  # lowest index among equal loads
        last_load = tl.sum(tl.where(rows == last, loads, 0.0), 0)
        scanned = (loads < last_load) | ((loads == last_load) & (rows <= last)) \
            | (tl.max(reached.to(tl.int32), 0) == 0)
        objective = tl.where(scanned[:, None, None], objective, inf)
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
                ow, oe, ol = _pack_of(pw, pe, pl, rows, col_valid, o, -3)
                low = tl.sum(tl.where(rows == o, loads, 0.0), 0)
                cu = tl.sum((oe[:, None] == he[None, :]).to(tl.int32), 1)  # [b]: in heavy
                cy = tl.sum((he[:, None] == oe[None, :]).to(tl.int32), 1)  # [a]: in pack o
                for x0 in range(0, BLOCK_C, PAIR_X):
                    d, ok2 = _pair_trades(hw, he, hl, cy, ow, oe, ol, cu, cols, cap, x0, PAIR_X)
                    ok2 = ok2 & (d > 0.0) & (d < top - low)
                    obj2 = tl.where(ok2, tl.maximum(top - d, low + d), inf)
                    flat2 = tl.reshape(obj2, (PAIR_X * BLOCK_C * BLOCK_C * BLOCK_C,))
                    cand = tl.min(flat2, 0)
                    at = tl.argmin(flat2, 0)
                    better = (cand < pair_best) & (~single)
                    pair_best = tl.where(better, cand, pair_best)
                    o_best = tl.where(better, o, o_best)
                    a1_best, a2_best, b1_best, b2_best = _trade_where(
                        better, at, x0, a1_best, a2_best, b1_best, b2_best, BLOCK_C)
            best = tl.where(single, best, pair_best)
        accept = (best < threshold) & (top > target)
        pw, pe, pl = _exchange(pw, pe, pl, rows, cols, tl.where(accept, heavy, -1), a1_best,
                               a2_best, tl.where(accept, o_best, -1), b1_best, b2_best)
        moves += accept.to(tl.int32)
        go = accept & (moves < max_moves)
    _store_packing(weight_ptr, expert_ptr, limit_ptr, base, valid, pw, pe, pl)
    tl.store(moves_ptr + row, moves)


@triton.jit
def _nearest_halving(pw, valid, cols, ideal):
    """[o, b, a]: whether slot b is one of the two slots of pack o (rows of pw [M, C]) whose
    weights bracket ideal [o, 1, a] (the CPU engine's candidates: its rows are sorted, heaviest
    first, and it tries the last slot above the ideal and the first at or below it)."""
    w = tl.where(valid, pw, -float("inf"))
    ahead = (w[:, None, :] > w[:, :, None]) \
        | ((w[:, None, :] == w[:, :, None]) & (cols[None, None, :] < cols[None, :, None]))
    place = tl.sum((ahead & valid[:, None, :]).to(tl.int32), 2)  # [o, b]: b's sorted slot
    first_below = tl.sum((w[:, :, None] > ideal).to(tl.int32), 1)  # [o, a]
    return (place[:, :, None] == first_below[:, None, :] - 1) \
        | (place[:, :, None] == first_below[:, None, :])


@triton.jit
def _exchange(pw, pe, pl, rows, cols, p, x, y, q, u, v):
    """pw, pe, pl [M, C] with slots x (and y) of pack p traded for slots u (and v) of pack q;
    y = v = -1 for 1-for-1, p = q = -1 for none (a scalar & a block is avoided: the
    interpreter's broadcast rejects it)."""
    at_q = rows[:, None] == q
    at_p = rows[:, None] == p
    take1 = at_q & (cols[None, :] == u)
    take2 = at_q & (cols[None, :] == v)
    give1 = at_p & (cols[None, :] == x)
    give2 = at_p & (cols[None, :] == y)
    return _traded(pw, take1, take2, give1, give2), _traded(pe, take1, take2, give1, give2), \
        _traded(pl, take1, take2, give1, give2)


@triton.jit
def _traded(values, take1, take2, give1, give2):
    """values [M, C] with the one slot of take1 swapped with that of give1, and take2's with
    give2's (masks of one slot or none)."""
    taken1 = tl.sum(tl.sum(tl.where(take1, values, 0), 1), 0)
    taken2 = tl.sum(tl.sum(tl.where(take2, values, 0), 1), 0)
    given1 = tl.sum(tl.sum(tl.where(give1, values, 0), 1), 0)
    given2 = tl.sum(tl.sum(tl.where(give2, values, 0), 1), 0)
    return tl.where(take1, given1, tl.where(take2, given2, tl.where(
        give1, taken1, tl.where(give2, taken2, values))))


@triton.jit
def _pair_trades(hw, he, hl, cy, ow, oe, ol, cu, cols, cap, x0, PAIR_X: tl.constexpr):
    """The 2-for-2 trades of slots x < y of pack p (weights hw, experts he, limits hl [C]) for
    slots u < v of pack q (ow, oe, ol [C]) that keep fair shares, for x in x0 .. x0 + PAIR_X - 1
    (a block of PAIR_X x C^3: the whole C^4 block spills registers on a GPU from C = 8): cy
    [C] replicas of each of p's experts in q, cu [C] of each of q's experts in p.
    -> (p's load drop d, allowed) [x - x0, y, u, v]"""
    a1 = x0 + tl.arange(0, PAIR_X)
    pick = cols[None, :] == a1[:, None]
    hw_x = tl.sum(tl.where(pick, hw[None, :], 0.0), 1)
    he_x = tl.sum(tl.where(pick, he[None, :], 0), 1)
    hl_x = tl.sum(tl.where(pick, hl[None, :], 0), 1)
    cy_x = tl.sum(tl.where(pick, cy[None, :], 0), 1)
    x = he_x[:, None, None, None]
    y = he[None, :, None, None]
    u = oe[None, None, :, None]
    v = oe[None, None, None, :]
    d = hw_x[:, None, None, None] + hw[None, :, None, None] - ow[None, None, :, None] \
        - ow[None, None, None, :]
    held_x = cy_x[:, None, None, None] - (u == x).to(tl.int32) - (v == x).to(tl.int32) + 1 \
        + (y == x).to(tl.int32)
    held_y = cy[None, :, None, None] - (u == y).to(tl.int32) - (v == y).to(tl.int32) \
        + (x == y).to(tl.int32) + 1
    held_u = cu[None, None, :, None] - (x == u).to(tl.int32) - (y == u).to(tl.int32) + 1 \
        + (v == u).to(tl.int32)
    held_v = cu[None, None, None, :] - (x == v).to(tl.int32) - (y == v).to(tl.int32) \
        + (u == v).to(tl.int32) + 1
    a2 = cols[None, :, None, None]
    b1 = cols[None, None, :, None]
    b2 = cols[None, None, None, :]
    allowed = (a1[:, None, None, None] < a2) & (a2 < cap) & (b1 < b2) & (b2 < cap) \
        & (held_x <= hl_x[:, None, None, None]) & (held_y <= hl[None, :, None, None]) \
        & (held_u <= ol[None, None, :, None]) & (held_v <= ol[None, None, None, :])
    return d, allowed


@triton.jit(do_not_specialize=["num_packs", "cap"])
def _balance(weight_ptr, expert_ptr, limit_ptr, order_ptr, run_ptr, num_packs, cap,
             BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, PAIR_X: tl.constexpr):
    """One sweep of pairwise balancing, as engine.packing.balance_pairs: for every two packs
    further apart than the heaviest is above the mean (the i-th heaviest with the lightest,
    the next lightest, ..., in the order of `order`), the 1-for-1 or 2-for-2 trade (fair shares
    kept) that brings their loads closest, if any narrows the gap. No pack ends above the
    heavier of its pair, so the peak never rises.

    weight [B, m, c] float64, expert / limit [B, m, c] int32 (updated in place), order [B, m]
    int32 packs by load, heaviest first; run [B] int32 (0: the row is left as it is)
    """
    row = tl.program_id(0).to(tl.int64)
    rows, cols, valid, base, pw, pe, pl = _load_packing(
        weight_ptr, expert_ptr, limit_ptr, row, num_packs, cap, BLOCK_M, BLOCK_C)
    row_valid = rows < num_packs
    col_valid = cols < cap
    inf = float("inf")
    loads = tl.sum(pw, 1)
    least_gap = tl.max(tl.where(row_valid, loads, -inf), 0) - tl.sum(loads, 0) / num_packs
    for i in range(num_packs * tl.load(run_ptr + row)):
        for j in range(num_packs - 1 - i):
            first = tl.load(order_ptr + row * num_packs + i)
            second = tl.load(order_ptr + row * num_packs + num_packs - 1 - j)
            loads = tl.sum(pw, 1)
            l_first = tl.sum(tl.where(rows == first, loads, 0.0), 0)
            l_second = tl.sum(tl.where(rows == second, loads, 0.0), 0)
            if tl.abs(l_first - l_second) > least_gap:  # closer pairs are left as they are
                p = tl.where(l_first < l_second, second, first)
                q = tl.where(l_first < l_second, first, second)
                half = 0.5 * tl.abs(l_first - l_second)
                hw, he, hl = _pack_of(pw, pe, pl, rows, col_valid, p, -2)
                ow, oe, ol = _pack_of(pw, pe, pl, rows, col_valid, q, -3)
                cu = tl.sum((oe[:, None] == he[None, :]).to(tl.int32), 1)  # [b]: held by p
                cy = tl.sum((he[:, None] == oe[None, :]).to(tl.int32), 1)  # [a]: held by q
                # 1-for-1: [a, b], slot a of p for slot b of q
                eq = (he[:, None] == oe[None, :]).to(tl.int32)
                fits = ((cy[:, None] - eq) < hl[:, None]) & ((cu[None, :] - eq) < ol[None, :]) \
                    & col_valid[:, None] & col_valid[None, :]
                score = tl.where(fits, tl.abs(hw[:, None] - ow[None, :] - half), inf)
                flat = tl.reshape(score, (BLOCK_C * BLOCK_C,))
                best = tl.min(flat, 0)
                where = tl.argmin(flat, 0)
                x_best = where // BLOCK_C
                u_best = where % BLOCK_C
                y_best = x_best * 0 - 1
                v_best = x_best * 0 - 1
                for x0 in range(0, BLOCK_C, PAIR_X):
                    d, ok2 = _pair_trades(hw, he, hl, cy, ow, oe, ol, cu, cols, cap, x0, PAIR_X)
                    flat2 = tl.reshape(tl.where(ok2, tl.abs(d - half), inf),
                                       (PAIR_X * BLOCK_C * BLOCK_C * BLOCK_C,))
                    cand = tl.min(flat2, 0)
                    at = tl.argmin(flat2, 0)
                    better = cand < best
                    best = tl.where(better, cand, best)
                    x_best, y_best, u_best, v_best = _trade_where(
                        better, at, x0, x_best, y_best, u_best, v_best, BLOCK_C)
                accept = best < half
                pw, pe, pl = _exchange(pw, pe, pl, rows, cols, tl.where(accept, p, -1), x_best,
                                       y_best, tl.where(accept, q, -1), u_best, v_best)
    _store_packing(weight_ptr, expert_ptr, limit_ptr, base, valid, pw, pe, pl)


@triton.jit
def _load_packing(weight_ptr, expert_ptr, limit_ptr, row, num_packs, cap, BLOCK_M: tl.constexpr,
                  BLOCK_C: tl.constexpr):
    """Problem `row`'s packing -> (rows [M], cols [C], valid [M, C], offsets [M, C], weight
    [M, C] float64, expert and limit [M, C] int32; 0, -1 and 0 outside the packs and slots)."""
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    valid = (rows[:, None] < num_packs) & (cols[None, :] < cap)
    base = row * num_packs * cap + rows[:, None] * cap + cols[None, :]
    pw = tl.load(weight_ptr + base, mask=valid, other=0.0)
    pe = tl.load(expert_ptr + base, mask=valid, other=-1)
    pl = tl.load(limit_ptr + base, mask=valid, other=0)
    return rows, cols, valid, base, pw, pe, pl


@triton.jit
def _store_packing(weight_ptr, expert_ptr, limit_ptr, base, valid, pw, pe, pl):
    """Writes a packing back where `_load_packing` read it."""
    tl.store(expert_ptr + base, pe, mask=valid)
    tl.store(weight_ptr + base, pw, mask=valid)
    tl.store(limit_ptr + base, pl, mask=valid)


@triton.jit
def _trade_where(better, at, x0, x, y, u, v, BLOCK_C: tl.constexpr):
    """Where `better`, the slots (x, y, u, v) of flat index `at` into a [X, C, C, C] block of
    `_pair_trades` from first slot x0; else the given x, y, u, v."""
    return tl.where(better, x0 + at // (BLOCK_C * BLOCK_C * BLOCK_C), x), \
        tl.where(better, (at // (BLOCK_C * BLOCK_C)) % BLOCK_C, y), \
        tl.where(better, (at // BLOCK_C) % BLOCK_C, u), tl.where(better, at % BLOCK_C, v)


@triton.jit
def _pack_of(pw, pe, pl, rows, col_valid, pack, missing):
    """Row `pack` of pw, pe, pl [M, C] -> its weights, experts (`missing` outside its slots: an
    expert no slot holds) and limits [C]."""
    at = rows[:, None] == pack
    experts = tl.where(col_valid, tl.sum(tl.where(at, pe, 0), 0), missing)
    return tl.sum(tl.where(at, pw, 0.0), 0), experts, tl.sum(tl.where(at, pl, 0), 0)
