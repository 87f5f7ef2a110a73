"""The differencing start (engine.packing.differencing), batched over problems in torch: a fixed
number of merges per problem and no host sync."""

from __future__ import annotations

import torch


def differencing(items: torch.Tensor, num_packs: int) -> torch.Tensor:
    """Balanced largest differencing (Karmarkar-Karp for equal-count packs), as the CPU engine
    does it: each run of m consecutive items is a partial packing of one item per pack; the two
    partials whose largest and smallest packs differ most (the lower index among equals) are
    merged, largest pack with smallest, until one is left.

    items: [B, n] float64, each row heaviest first, n a multiple of num_packs -> pack [B, n]
    int64 of each item (packs numbered by load, heaviest first, as the CPU engine's rows).
    """
    rows, n = items.shape
    cap = n // num_packs
    device = items.device
    total = items.reshape(rows, cap, num_packs).clone()  # per partial: its packs, largest first
    position = torch.arange(n, device=device).expand(rows, n)
    part, place = position // num_packs, position % num_packs  # each item's partial and pack
    alive = torch.ones((rows, cap), dtype=torch.bool, device=device)
    ranks = torch.arange(num_packs, device=device).expand(rows, num_packs)
    for _ in range(cap - 1):
        spread = torch.where(alive, total[:, :, 0] - total[:, :, -1], -1.0)
        a = spread.argmax(1, keepdim=True)  # the first of the largest
        b = spread.scatter(1, a, -2.0).argmax(1, keepdim=True)  # the first of the rest
        index = a[:, :, None].expand(rows, 1, num_packs)
        merged = total.gather(1, index)[:, 0] \
            + total.gather(1, b[:, :, None].expand(rows, 1, num_packs))[:, 0].flip(-1)
        merged, order = merged.sort(dim=1, descending=True, stable=True)
        total.scatter_(1, index, merged[:, None])
        new_place = torch.empty_like(order).scatter_(1, order, ranks)
        in_b = part == b
        place = torch.where(in_b, num_packs - 1 - place, place)
        part = torch.where(in_b, a, part)
        place = torch.where(part == a, new_place.gather(1, place), place)
        alive = alive.scatter(1, b, False)
    return place
