"""Replica counts at two slots per GPU, batched over problems in torch (fixed step counts, no
host sync): the pairing's peak, a local count search and the bisection on the peak."""

from __future__ import annotations

import torch

from ..pairing import SKIP_MARGIN, THRESHOLD_MAX_WORK, THRESHOLD_STEPS

COUNT_SEARCH_WIDTH = 4  # receivers per replica move: this many largest and smallest pieces
LOOKAHEAD_EVERY = 8  # count search steps per two-move lookahead
ACCEPT = 1e-6  # a move is taken where it lowers the peak by more than this (float32 LPT pairs)
LOOKAHEAD_DONORS = 64  # first moves of a lookahead: from up to this many cheapest donors
LOOKAHEAD_MAX_EXPERTS = 64  # as the CPU engine: the lookahead costs O(n^3) per problem


def pair_peaks(weight64: torch.Tensor, counts: torch.Tensor, slots: int) -> torch.Tensor:
    """weight64 [..., n], counts [..., n] summing to `slots` -> [...] the peak of pairing the
    largest piece with the smallest (optimal for the counts at two slots per pack). In O(n):
    with pieces ascending, an expert's pieces from position a on pair with positions
    slots - 1 - a down, so its largest pair is its piece plus the piece at slots - 1 - a."""
    shape, n = counts.shape[:-1], counts.shape[-1]
    piece = (weight64 / counts).reshape(-1, n)
    piece, order = piece.sort(dim=1)
    held = counts.reshape(-1, n).gather(1, order)
    cum = held.cumsum(1)
    mirror = slots - 1 - (cum - held)  # the partner of each expert's first position
    partner = torch.searchsorted(cum, mirror, right=True).clamp(max=n - 1)
    return (piece + piece.gather(1, partner)).amax(1).view(shape)


def _best_move(weight64: torch.Tensor, counts: torch.Tensor, slots: int):
    """The best single replica move of each row, as engine.pairing._best_replica_move: donors
    the 2 * COUNT_SEARCH_WIDTH experts whose pieces grow least, receivers the COUNT_SEARCH_WIDTH
    largest and smallest pieces. weight64, counts [R, n] -> (peak [R], counts [R, n]); a row
    with no move gets its own counts and peak."""
    rows, n = counts.shape
    width = min(COUNT_SEARCH_WIDTH, n)
    eye = torch.eye(n, dtype=torch.long, device=counts.device)
    loss = torch.where(counts > 1, weight64 / (counts - 1).clamp(min=1), torch.inf)
    donors = loss.topk(min(2 * width, n), dim=1, largest=False).indices  # [R, <= 2w]
    piece = weight64 / counts
    receivers = torch.cat([piece.topk(width, dim=1).indices,
                           piece.topk(width, dim=1, largest=False).indices], 1)  # [R, 2w]
    moved = counts[:, None, None, :] + eye[receivers][:, :, None, :] \
        - eye[donors][:, None, :, :]  # [R, receivers, donors, n]: the CPU's order
    valid = (moved.amin(-1) >= 1) & (receivers[:, :, None] != donors[:, None, :])
    moved = torch.where(valid[..., None], moved, counts[:, None, None, :])
    peaks = pair_peaks(weight64[:, None, None, :].expand(moved.shape), moved, slots)
    best, where = peaks.view(rows, -1).min(1)
    chosen = moved.view(rows, -1, n).gather(1, where.view(rows, 1, 1).expand(rows, 1, n))
    return best, chosen[:, 0]


def _best_two_moves(weight64: torch.Tensor, counts: torch.Tensor, slots: int):
    """As the CPU engine's lookahead where no single move helps: a replica from any expert to
    one of the COUNT_SEARCH_WIDTH largest pieces (which may raise the peak), then the best
    single move. weight64, counts [R, n] -> (peak [R], counts [R, n])"""
    rows, n = counts.shape
    width = min(COUNT_SEARCH_WIDTH, n)
    eye = torch.eye(n, dtype=torch.long, device=counts.device)
    receivers = (weight64 / counts).topk(width, dim=1).indices  # [R, w]
    loss = torch.where(counts > 1, weight64 / (counts - 1).clamp(min=1), torch.inf)
    donors = loss.topk(min(LOOKAHEAD_DONORS, n), dim=1, largest=False).indices \
        .sort(1).values  # [R, d], by index as the CPU engine tries them
    first = counts[:, None, None, :] - eye[donors][:, None, :, :] \
        + eye[receivers][:, :, None, :]  # [R, w, d, n]
    valid = (first.amin(-1) >= 1) & (receivers[:, :, None] != donors[:, None, :])
    first = torch.where(valid[..., None], first, counts[:, None, None, :]).view(-1, n)
    many = valid.shape[1] * valid.shape[2]
    peaks, second = _best_move(weight64[:, None].expand(-1, many, -1).reshape(-1, n), first,
                               slots)
    peaks = torch.where(valid.view(-1), peaks, torch.inf).view(rows, -1)
    best, where = peaks.min(1)
    chosen = second.view(rows, -1, n).gather(1, where.view(rows, 1, 1).expand(rows, 1, n))
    return best, chosen[:, 0]


def pair_count_search(weight64: torch.Tensor, counts: torch.Tensor, slots: int, steps: int):
    """`steps` replica moves (engine.pairing.count_search_pairs in fixed steps), each the best
    single move (`_best_move`) taken where it lowers the pairing's peak; every
    LOOKAHEAD_EVERY-th step, on problems of at most LOOKAHEAD_MAX_EXPERTS experts, two moves in a
    row where no single one helps. weight64 [B, n], counts [B, n] summing to `slots`
    -> (counts [B, n] int64, peak [B])"""
    counts = counts.long()
    peak = pair_peaks(weight64, counts, slots)
    for step in range(steps):
        best, chosen = _best_move(weight64, counts, slots)
        take = best < peak * (1.0 - ACCEPT)  # beyond float32 reordering of pieces
        if step % LOOKAHEAD_EVERY == LOOKAHEAD_EVERY - 1 and counts.shape[1] <= LOOKAHEAD_MAX_EXPERTS:
            two, chosen_two = _best_two_moves(weight64, counts, slots)
            two_take = ~take & (two < peak * (1.0 - ACCEPT))
            chosen = torch.where(two_take[:, None], chosen_two, chosen)
            best = torch.where(two_take, two, best)
            take |= two_take
        counts = torch.where(take[:, None], chosen, counts)
        peak = torch.where(take, best, peak)
    return counts, peak


def _levels(weight64: torch.Tensor, counts: torch.Tensor, limit: torch.Tensor):
    """Each expert's place in Hall's condition for pairs under limit [B, 1] (as
    engine.pairing._level): pieces of at most limit / 2 offer `counts` partners at their size,
    larger ones need `counts` partners of at most limit - piece. -> (level, change) [B, n]"""
    piece = weight64 / counts
    small = piece <= 0.5 * limit
    return torch.where(small, piece, limit - piece), torch.where(small, counts, -counts)


def _first_short_level(level: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
    """[B, n] -> [B] the lowest level where fewer partners are offered than needed (all equal
    levels counted together), inf where none is short."""
    level, order = level.sort(1)
    balance = change.gather(1, order).cumsum(1)
    last = torch.searchsorted(level, level, right=True) - 1  # the last of equal levels
    short = balance.gather(1, last) < 0
    return torch.where(short, level, torch.inf).amin(1)


def _fits(weight64: torch.Tensor, slots: int, limit: torch.Tensor):
    """engine.pairing._fits for every problem at once: from the fewest replicas that keep each
    piece under limit [B] (> 0), slots - n times give one replica to the expert that adds most
    partners at the lowest short level (the largest new piece among equals).
    weight64 [B, n] -> (fits [B] bool, counts [B, n] int64 with at most `slots` replicas)"""
    rows, n = weight64.shape
    limit = limit[:, None]
    pieces = torch.ceil(weight64 / limit)
    failed = (pieces > slots).any(1)
    counts = pieces.clamp(1, slots).long()
    failed |= counts.sum(1) > slots
    arange = torch.arange(n, device=weight64.device)
    for _ in range(slots - n):
        level, change = _levels(weight64, counts, limit)
        here = _first_short_level(level, change)[:, None]
        short = torch.isfinite(here[:, 0]) & ~failed
        next_level, next_change = _levels(weight64, counts + 1, limit)
        gain = torch.where(next_level <= here, next_change, 0) \
            - torch.where(level <= here, change, 0)
        best_gain = gain.amax(1)
        piece = weight64 / (counts + 1)
        pick = torch.where(gain == best_gain[:, None], piece, -torch.inf).argmax(1)
        ok = short & (best_gain > 0) & (counts.sum(1) < slots)
        failed |= short & ~ok
        counts = counts + ((arange == pick[:, None]) & ok[:, None]).long()
    failed |= torch.isfinite(_first_short_level(*_levels(weight64, counts, limit)))
    return ~failed, counts


def threshold_counts(weight64: torch.Tensor, slots: int, low: torch.Tensor, high: torch.Tensor,
                     steps: int = THRESHOLD_STEPS):
    """engine.pairing.threshold_counts batched: counts for slots / 2 pairs whose best pairing
    peaks below `high`, by bisection on the peak over [low, high] (first just below high, and
    no further where that fails); spare replicas go to the largest pieces under half the limit.
    weight64 [B, n], low, high [B] -> (counts [B, n] int64 summing to `slots`, peak [B]; inf
    where none was found, and counts then all ones)."""
    rows, n = weight64.shape
    device = weight64.device
    none = torch.ones((rows, n), dtype=torch.long, device=device)
    if (slots - n) * n > THRESHOLD_MAX_WORK:  # as the CPU engine: too costly, not tried
        return none, torch.full((rows,), torch.inf, dtype=weight64.dtype, device=device)
    best, best_limit = none, high
    found = torch.zeros(rows, dtype=torch.bool, device=device)
    stopped = ~(high > 0)
    for step in range(steps):
        limit = high * (1.0 - SKIP_MARGIN) if step == 0 else 0.5 * (low + high)
        valid = (low <= limit) & (limit < high) & (limit > 0) & ~stopped
        fits, counts = _fits(weight64, slots, torch.where(valid, limit, 1.0))
        fits &= valid
        stopped |= ~valid | (~fits if step == 0 else False)
        high = torch.where(fits, limit, high)
        best = torch.where(fits[:, None], counts, best)
        best_limit = torch.where(fits, limit, best_limit)
        found |= fits
        low = torch.where(valid & ~fits, limit, low)
    arange = torch.arange(n, device=device)
    for _ in range(slots - n):  # splitting a small piece keeps every pair under the limit
        piece = weight64 / best
        small = piece <= 0.5 * best_limit[:, None]
        spare = torch.where(small, piece, -torch.inf).argmax(1)
        short = best.sum(1) < slots
        found &= ~(short & ~small.any(1))
        best = best + ((arange == spare[:, None]) & (short & found)[:, None]).long()
    best = torch.where(found[:, None], best, none)
    counts = torch.where(found[:, None], best, _filler(n, slots, device))
    peak = pair_peaks(weight64, counts, slots)
    return best, torch.where(found, peak, torch.inf)


def _filler(n: int, slots: int, device) -> torch.Tensor:
    """[1, n] counts summing to `slots` (the rest on expert 0): a stand-in where no counts were
    found, so that pair_peaks sees valid counts."""
    counts = torch.ones((1, n), dtype=torch.long, device=device)
    counts[0, 0] += slots - n
    return counts


def search_counts(weight64: torch.Tensor, counts: torch.Tensor, slots: int, packs: int,
                  steps: int) -> torch.Tensor:
    """At two slots per pack, as the CPU engine: `steps` replica moves from the reference's
    counts, then the bisection on the peak below the moves' peak; the lower pairing kept.
    weight64 [B, n], counts [B, n] summing to `slots` -> counts [B, n] int32"""
    counts, peak = pair_count_search(weight64, counts, slots, steps)
    other, other_peak = threshold_counts(weight64, slots, weight64.sum(1) / packs, peak)
    return torch.where((other_peak < peak)[:, None], other, counts).to(torch.int32)
