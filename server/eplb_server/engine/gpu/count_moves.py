"""Replica count moves above two slots per GPU (engine.packing._count_moves), batched: a fixed
number of rounds, each packing every problem's candidate counts at once; no host sync."""

from __future__ import annotations

import torch

from ..packing import COUNT_MOVE_GAP, COUNT_MOVE_SLOTS, COUNT_MOVE_TAKERS

from .packing import pack_counts

# Rounds at most: a round tries all of a problem's moves at once, so this many accepted moves;
# the CPU engine's budget allows ceil(budget / slots per GPU) rounds and more (a 2-GPU node of 8
# slots: 32), which under triton's interpreter took minutes for a 2-layer test case.
COUNT_MOVE_ROUNDS = 8


def count_moves(w32, w64, counts, pack_expert, peak, slots, packs, enough):
    """While a problem's peak stays COUNT_MOVE_GAP above its bound, the CPU engine's single
    replica moves, each packed in full (pack_counts), the lowest kept where it lowers the
    peak: for each expert on the heaviest GPU (heaviest piece first) a replica to the expert of
    largest piece, and for the first COUNT_MOVE_TAKERS of them one from the expert that loses
    least. COUNT_MOVE_SLOTS slots' worth of packings per problem, as the CPU engine; each round
    packs all of a problem's moves (within that budget) at once, COUNT_MOVE_ROUNDS at most.

    w32, w64, counts [B, n]; pack_expert [B, m, c] int32, peak [B] (inf: a row left as it is);
    enough [B] -> (counts, pack_expert, peak), updated
    """
    rows, n = counts.shape
    cap = slots // packs
    budget = COUNT_MOVE_SLOTS // slots
    if cap <= 2 or budget == 0:
        return counts, pack_expert, peak
    device = w64.device
    mean = w64.sum(1) / packs
    left = torch.full((rows,), budget, device=device)
    moves = 2 * cap  # a giver and a taker per slot of the heaviest GPU, in the CPU's order
    eye = torch.eye(n, dtype=counts.dtype, device=device)
    w32_each, w64_each, enough_each = _each(w32, moves), _each(w64, moves), _each(enough, moves)
    for _ in range(min(-(-budget // cap), COUNT_MOVE_ROUNDS)):
        piece = w64 / counts
        bound = torch.maximum(mean, piece.amax(1))
        active = (peak > torch.maximum(bound * (1.0 + COUNT_MOVE_GAP), enough)) \
            & (left > 0) & torch.isfinite(peak)
        experts = _heaviest_experts(piece, pack_expert)  # [B, c], heaviest piece first
        distinct = torch.ones_like(experts, dtype=torch.bool)
        distinct[:, 1:] = experts[:, 1:] != experts[:, :-1]
        giver = distinct & (counts.gather(1, experts) > 1)
        taker = distinct & (distinct.cumsum(1) <= COUNT_MOVE_TAKERS)
        receiver = _first_other(piece, experts, largest=True)  # of each giver's replica
        loss = torch.where(counts > 1, w64 / (counts - 1).clamp(min=1), torch.inf)
        source = _first_other(loss, experts, largest=False)  # of each taker's replica
        taker &= torch.isfinite(loss.gather(1, source))
        move_from = torch.stack([experts, source], 2).view(rows, moves)
        move_to = torch.stack([receiver, experts], 2).view(rows, moves)
        valid = torch.stack([giver, taker], 2).view(rows, moves)
        valid &= (valid.cumsum(1) <= left[:, None]) & active[:, None]
        left = left - valid.sum(1)
        tried = counts[:, None, :] + eye[move_to] - eye[move_from]  # [B, moves, n]
        tried_expert, tried_peak = pack_counts(
            w32_each, w64_each, tried.view(rows * moves, n), slots, packs, ~valid.view(-1),
            enough_each)
        best_peak, best = tried_peak.view(rows, moves).min(1)  # the first of the lowest
        found = best_peak < peak
        left = torch.where(found, left, 0)  # no move helps: the CPU engine stops
        pick = torch.arange(rows, device=device) * moves + best
        counts = torch.where(found[:, None], tried.view(rows * moves, n)[pick], counts)
        pack_expert = torch.where(found[:, None, None], tried_expert[pick], pack_expert)
        peak = torch.where(found, best_peak, peak)
    return counts, pack_expert, peak


def _each(values, times):
    """[B, ...] -> [B * times, ...], each row `times` times in a row (repeat_interleave with an
    int repeat, without the op a sync check has to trust)"""
    return values[:, None].expand(values.shape[0], times, *values.shape[1:]).reshape(
        -1, *values.shape[1:])


def _heaviest_experts(piece, pack_expert):
    """piece [B, n], pack_expert [B, m, c] -> the experts of each row's heaviest GPU (the first
    of the heaviest) [B, c] int64, largest piece first (lower slot among equals)."""
    rows, packs, cap = pack_expert.shape
    experts = pack_expert.long()
    pieces = piece.gather(1, experts.view(rows, -1)).view(rows, packs, cap)
    heavy = pieces.sum(-1).argmax(1)
    experts = experts.gather(1, heavy.view(rows, 1, 1).expand(rows, 1, cap))[:, 0]
    order = piece.gather(1, experts).sort(dim=1, descending=True, stable=True).indices
    return experts.gather(1, order)


def _first_other(key, experts, largest):
    """key [B, n], experts [B, c] -> for each expert the index of the largest (smallest) key
    among the other experts, the lower index among equals [B, c]."""
    worst = -torch.inf if largest else torch.inf
    pick = torch.argmax if largest else torch.argmin
    first = pick(key, 1, keepdim=True)
    second = pick(key.scatter(1, first, worst), 1, keepdim=True) if key.shape[1] > 1 else first
    return torch.where(experts == first, second, first)
