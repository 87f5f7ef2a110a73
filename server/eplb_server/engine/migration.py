"""Keeps what can stay of the current placement when re-planning (see issue 5).

Three stages, all per layer and all pure functions of their arrays:

1. Free wins (`relabel`): the new plan's GPUs (and, for hierarchical plans, whole node blocks)
   are renamed to match the current mapping as an assignment problem maximising kept slots,
   then each surviving expert goes back to its current slot on its GPU. Every GPU keeps its
   multiset of experts, so no GPU load changes. Without a budget it runs only for the layers
   that take the new plan (`kept_slots_bound` stands in for its count of kept slots before).
2. Trade (`_cheapest_within`, `_budgeted`): per layer, the options are the current mapping
   (0 moves), the relabelled new plan, every prefix of a greedy local repair of the current
   mapping (`repair`: each step replaces one replica on the heaviest GPU, or swaps two
   replicas, whichever lowers the peak most per slot changed), and at two slots per GPU the
   current pairs re-paired under the new plan's counts (`repairing.repair_pairs`). The
   cheapest option whose peak is within `tolerance` of the best affordable one wins; layers
   whose balancedness gain is below `min_balancedness_gain` keep their mapping; a total
   budget is shared out by the best peak reduction per moved slot.
3. Transfers (`transfers`): each changed slot receives its expert from a slot that holds it in
   the current mapping: the same GPU if possible, else the same node, else any.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from . import rows
from .matching import sparse_max_weight_assignment
from .refined import refined_plan
from .repairing import repair_pairs
from .scoring import balance_ratio, gpu_loads
from .sorting import ascending_into, resort

# Default relative peak tolerance: a layer keeps its current mapping (or takes the cheaper
# repair) when its peak GPU load is within 0.2% of the best affordable plan's. Re-measuring the
# same workload moves per-layer peaks by more than that (noise), while 0.2% per layer keeps the
# aggregate balancedness within 0.2% of from-scratch planning, inside the 0.5% target.
DEFAULT_TOLERANCE = 0.002
_NO_PEAK = np.inf
# Repair counts a move that copies an expert onto a node that holds no replica of it at this
# fraction of its peak reduction, so that it prefers moves inside a node.
CROSS_NODE_FACTOR = 0.8
# Repair offers a new replica of a hot expert to slots on this many of the lightest GPUs only:
# such moves are rarely the best (swaps are), and scanning every slot dominated the search.
_LIGHT_GPUS = 4


@dataclass(frozen=True)
class MigrationOptions:
    """Movement limits; zero means unlimited. tolerance: relative peak slack (see above)."""

    max_moved_slots_per_layer: int = 0
    max_moved_slots_total: int = 0
    min_balancedness_gain: float = 0.0
    tolerance: float = DEFAULT_TOLERANCE


@dataclass(frozen=True)
class Migration:
    """What moving from the current mapping to the returned one costs: numpy arrays here, CPU
    torch tensors where engine.plan was given torch tensors."""

    slots_changed: int
    cross_node_copies: int
    layer_slots_changed: np.ndarray  # [L] int64
    layer_changed: np.ndarray  # [L] bool
    layers_kept_for_lack_of_gain: int
    transfers: np.ndarray  # [M, 4] int64: (layer, slot, expert, source_slot)
    transfer_cross_node: np.ndarray  # [M] bool
    layer_balancedness_before: np.ndarray  # [L] float64: mean / peak GPU load, current mapping
    layer_balancedness_after: np.ndarray  # [L] float64: the same for the returned mapping


# --------------------------------------------------------------------------- relabelling


@numba.njit(cache=True, nogil=True)
def _match_blocks(new_row, cur_row, new_first, cur_first, count, block, scratch):
    """Best assignment of `count` new blocks of `block` slots (starting at block new_first) to
    current blocks (starting at cur_first). -> cur block index for each new block, [count].

    The overlaps (multiset intersections) come from each expert's current slots, so the cost is
    about one step per replica pair rather than count^2 * block, and only the pairs of blocks
    that overlap are listed for the assignment. scratch: [E] int64 (clobbered).
    """
    row_start = np.zeros(count + 1, np.int64)
    edge_col = np.empty(4 * count, np.int64)  # grows: a row has at most `count` pairs
    edge_weight = np.empty(4 * count, np.int64)
    edge_of = np.full(count, -1, np.int64)  # the current row's pair with each current block
    num_edges = 0
    lo = cur_first * block
    hi = (cur_first + count) * block
    head = scratch  # head[e]: lowest current slot in range holding e, -1 if none
    for k in range(lo, hi):
        head[cur_row[k]] = -1
    for k in range(new_first * block, (new_first + count) * block):
        head[new_row[k]] = -1
    nxt = np.empty(hi - lo, np.int64)
    for q in range(hi - 1, lo - 1, -1):
        e = cur_row[q]
        nxt[q - lo] = head[e]
        head[e] = q
    claimed = np.zeros(hi - lo, np.bool_)
    for a in range(count):
        if num_edges + count > edge_col.size:
            extra = np.empty(edge_col.size + count, np.int64)
            edge_col, edge_weight = np.concatenate((edge_col, extra)), \
                np.concatenate((edge_weight, extra))
        first = (new_first + a) * block
        for k in range(first, first + block):
            last_block = -1
            q = head[new_row[k]]
            while q >= 0:
                b = (q - lo) // block
                if b != last_block and not claimed[q - lo]:
                    claimed[q - lo] = True
                    if edge_of[b] < 0:
                        edge_of[b], edge_col[num_edges], edge_weight[num_edges] = num_edges, b, 0
                        num_edges += 1
                    edge_weight[edge_of[b]] += 1
                    last_block = b
                q = nxt[q - lo]
        row_start[a + 1] = num_edges
        for e in range(row_start[a], num_edges):
            edge_of[edge_col[e]] = -1
        for k in range(first, first + block):  # un-claim for the next new block
            q = head[new_row[k]]
            while q >= 0:
                claimed[q - lo] = False
                q = nxt[q - lo]
    for k in range(lo, hi):
        scratch[cur_row[k]] = 0
    for k in range(new_first * block, (new_first + count) * block):
        scratch[new_row[k]] = 0
    return sparse_max_weight_assignment(row_start, edge_col[:num_edges],
                                        edge_weight[:num_edges]) + cur_first


@numba.njit(cache=True, nogil=True)
def _relabel_layer(new_row, cur_row, num_experts, num_nodes, num_gpus, hierarchical):
    """new_row, cur_row: [P] -> the new plan with GPUs renamed and experts kept in place, [P]."""
    num_slots = new_row.size
    per_gpu = num_slots // num_gpus
    scratch = np.zeros(num_experts, np.int64)
    gpu_target = np.empty(num_gpus, np.int64)  # current GPU that each new GPU becomes
    zero = np.int64(0)  # not the literal 0: _match_blocks compiles once
    if hierarchical and num_nodes > 1:
        gpus_per_node = num_gpus // num_nodes
        node_target = _match_blocks(new_row, cur_row, zero, zero, num_nodes,
                                    num_slots // num_nodes, scratch)
        for node in range(num_nodes):
            inner = _match_blocks(new_row, cur_row, node * gpus_per_node,
                                  node_target[node] * gpus_per_node, gpus_per_node, per_gpu,
                                  scratch)
            for k in range(gpus_per_node):
                gpu_target[node * gpus_per_node + k] = inner[k]
    else:
        gpu_target[:] = _match_blocks(new_row, cur_row, zero, zero, num_gpus, per_gpu, scratch)
    out = np.empty(num_slots, np.int64)
    placed = np.zeros(per_gpu, np.bool_)
    for gpu in range(num_gpus):
        src = gpu * per_gpu
        dst = gpu_target[gpu] * per_gpu
        for k in range(per_gpu):
            scratch[new_row[src + k]] += 1
        filled = np.zeros(per_gpu, np.bool_)
        for k in range(per_gpu):  # survivors stay in their current slot
            e = cur_row[dst + k]
            if scratch[e] > 0:
                scratch[e] -= 1
                out[dst + k] = e
                filled[k] = True
        placed[:] = False
        k = 0
        for j in range(per_gpu):  # the rest fill the free slots in order
            e = new_row[src + j]
            if scratch[e] > 0:
                scratch[e] -= 1
                while filled[k]:
                    k += 1
                out[dst + k] = e
                filled[k] = True
    return out


def relabel(new_phy2log, current_phy2log, num_experts, num_nodes, num_gpus, hierarchical):
    """new_phy2log, current_phy2log: [L, P] -> [L, P], the new plan renamed to keep most slots.

    Permutes GPUs (within nodes, and whole nodes, when hierarchical) and slots within GPUs only,
    so every GPU's load and every node's groups are unchanged. Layers in parallel where the
    plan's thread count allows (rows.run).
    """
    out = np.empty_like(new_phy2log)
    rows.run(_relabel_rows, new_phy2log.shape[0], new_phy2log, current_phy2log, num_experts,
             num_nodes, num_gpus, hierarchical, out)
    return out


@numba.njit(cache=True, nogil=True)
def _relabel_rows(new_phy2log, current_phy2log, num_experts, num_nodes, num_gpus, hierarchical,
                  out, start, stop):
    """relabel's layers [start, stop), into out [L, P]."""
    for layer in range(start, stop):
        out[layer] = _relabel_layer(new_phy2log[layer], current_phy2log[layer], num_experts,
                                    num_nodes, num_gpus, hierarchical)


@numba.njit(cache=True, nogil=True, _nrt=False)
def _slot_lists(row, head, nxt):
    """Each expert's slots in row [P], ascending, as linked lists: head [E] holds the first
    (-1 if none), nxt [P] the next after each slot (-1 at the end)."""
    head[:] = -1
    for p in range(row.size - 1, -1, -1):
        nxt[p] = head[row[p]]
        head[row[p]] = p


@numba.njit(cache=True, nogil=True, _nrt=False)
def _kept_slots_bound_layer(new_row, cur_row, slot_gpu, head, nxt, only_gpu, seen_on, seen,
                            on_gpu):
    """Scratch: head, only_gpu, seen_on, seen [E]; nxt [P]; on_gpu [G] zeros (restored)."""
    num_gpus = on_gpu.size
    per_gpu = new_row.size // num_gpus
    _slot_lists(cur_row, head, nxt)
    only_gpu[:] = -1  # the GPU of an expert's only current replica, else -1
    seen_on[:] = -1
    for p in range(cur_row.size):
        if head[cur_row[p]] == p and nxt[p] < 0:
            only_gpu[cur_row[p]] = slot_gpu[p]
    kept = 0
    for g in range(num_gpus):
        for k in range(g * per_gpu, (g + 1) * per_gpu):
            e = new_row[k]
            if seen_on[e] != g:  # seen[e]: replicas of e on g before slot k; a current GPU
                seen_on[e] = g  # can keep e only where it holds more than those
                seen[e] = 0
            if only_gpu[e] >= 0:
                if seen[e] == 0:
                    on_gpu[only_gpu[e]] += 1
            else:
                q = head[e]
                while q >= 0:
                    h = slot_gpu[q]
                    held = 0
                    while q >= 0 and slot_gpu[q] == h:
                        held += 1
                        q = nxt[q]
                    if held > seen[e]:
                        on_gpu[h] += 1
            seen[e] += 1
        most = 0  # on_gpu[h]: slots of new GPU g that current GPU h could keep
        for h in range(num_gpus):
            most = max(most, on_gpu[h])
            on_gpu[h] = 0
        kept += most
    return kept


def kept_slots_bound(new_phy2log, current_phy2log, num_experts, num_gpus):
    """Upper bound on the slots `relabel` keeps, per layer: each new GPU keeps at most its
    overlap with the current GPU it shares most with. [L, P] x2 -> [L] int64 (layers in
    parallel where the plan's thread count allows: rows.run)."""
    num_layers, num_slots = new_phy2log.shape
    slot_gpu = np.arange(num_slots, dtype=np.int64) // (num_slots // num_gpus)
    out = np.zeros(num_layers, np.int64)
    rows.run(_kept_slots_bound_rows, num_layers, new_phy2log, current_phy2log, num_experts,
             num_gpus, slot_gpu, out)
    return out


@numba.njit(cache=True, nogil=True)
def _kept_slots_bound_rows(new_phy2log, current_phy2log, num_experts, num_gpus, slot_gpu, out,
                           start, stop):
    """kept_slots_bound's layers [start, stop), into out [L]."""
    num_slots = new_phy2log.shape[1]
    for layer in range(start, stop):
        scratch = np.empty((4, num_experts), np.int64)
        out[layer] = _kept_slots_bound_layer(
            new_phy2log[layer], current_phy2log[layer], slot_gpu, scratch[0],
            np.empty(num_slots, np.int64), scratch[1], scratch[2], scratch[3],
            np.zeros(num_gpus, np.int64))


# --------------------------------------------------------------------------- local repair


@numba.njit(cache=True, nogil=True, _nrt=False)
def _touched_peak(weight, cur, counts, load, head, nxt, per_gpu, a, y, delta, touched,
                  touched_list):
    """Heaviest load, after slot a changes from x = cur[a] to y, among the GPUs that hold x or y
    (slot a's GPU included). delta, touched: [G] zeros / False scratch (restored)."""
    x = cur[a]
    share_x = weight[x] / counts[x]
    grow_x = weight[x] / (counts[x] - 1) - share_x
    share_y = weight[y] / counts[y]
    new_share_y = weight[y] / (counts[y] + 1)
    n_touched = 0
    for pass_ in range(2):
        p = head[x] if pass_ == 0 else head[y]
        while p >= 0:
            g = p // per_gpu
            if not touched[g]:
                touched[g] = True
                touched_list[n_touched] = g
                n_touched += 1
            if p == a:
                delta[g] += new_share_y - share_x
            elif pass_ == 0:
                delta[g] += grow_x
            else:
                delta[g] += new_share_y - share_y
            p = nxt[p]
    new_peak = 0.0
    for t in range(n_touched):
        g = touched_list[t]
        new_peak = max(new_peak, load[g] + delta[g])
        touched[g] = False
        delta[g] = 0.0
    return new_peak


@numba.njit(cache=True, nogil=True, _nrt=False)
def _others_bound(weight, counts, load, head, nxt, per_gpu, x, skip_gpu):
    """Heaviest load among the GPUs (other than skip_gpu) holding x once x loses a replica."""
    grow_x = weight[x] / (counts[x] - 1) - weight[x] / counts[x]
    bound = 0.0
    p = head[x]
    while p >= 0:
        g = p // per_gpu
        if g != skip_gpu:
            bound = max(bound, load[g] + grow_x)  # (several replicas on one GPU: a lower bound)
        p = nxt[p]
    return bound


@numba.njit(cache=True, nogil=True, _nrt=False)
def _gpu_sums(load, cur, share):
    """load [G] = the sum of share [E] over each GPU's slots of cur [P]."""
    per_gpu = cur.size // load.size
    for g in range(load.size):
        total = 0.0
        for p in range(g * per_gpu, (g + 1) * per_gpu):
            total += share[cur[p]]
        load[g] = total


@numba.njit(cache=True, nogil=True, _nrt=False)
def _sort_slots(slots, slot_share, cur, share, first):
    """Fills slots [c] with first .. first + c - 1, by share of their expert, heaviest first,
    and slot_share [c] with those shares."""
    for k in range(slots.size):
        key, j = share[cur[first + k]], k
        while j > 0 and slot_share[j - 1] < key:
            slots[j] = slots[j - 1]
            slot_share[j] = slot_share[j - 1]
            j -= 1
        slots[j] = first + k
        slot_share[j] = key


@numba.njit(cache=True, nogil=True)
def _repair_state(row, num_gpus, gpu_node, expert_group, num_experts):
    """A layer's mapping as the repair tracks it: (cur [P] a copy of row, counts [E] replicas per
    expert, node_has [N, E] replicas per node, slot_group [P] group of each slot's expert)."""
    num_slots = row.size
    per_gpu = num_slots // num_gpus
    cur = row.copy()
    counts = np.zeros(num_experts, np.int64)
    node_has = np.zeros((gpu_node.max() + 1, num_experts), np.int64)
    slot_group = np.empty(num_slots, np.int64)
    for g in range(num_gpus):
        for p in range(g * per_gpu, (g + 1) * per_gpu):
            counts[cur[p]] += 1
            node_has[gpu_node[g], cur[p]] += 1
            slot_group[p] = expert_group[cur[p]]
    return cur, counts, node_has, slot_group


@numba.njit(cache=True, nogil=True, _nrt=False)
def _nodes_taking_hot(hot_fits, allowed, slot_group, hot, per_gpu):
    """hot_fits [N]: may node n take one of the hot GPU's experts (hierarchical: usually only
    its own node)?"""
    for n in range(allowed.shape[0]):
        hot_fits[n] = False
        for a in range(hot * per_gpu, (hot + 1) * per_gpu):
            hot_fits[n] = hot_fits[n] or allowed[n, slot_group[a]]


@numba.njit(cache=True, nogil=True, _nrt=False)
def _best_swap(cur, share, load, order, peak, hot, per_gpu, gpu_node, slot_node, allowed,
               slot_group, node_has, hot_fits, by_slot_share, sorted_share, slots_sorted,
               cross_factor):
    """The best swap of slot a on the hot GPU with slot b elsewhere (two changes), scored by
    peak reduction per slot changed: -> (score, a, b), score 0.0 when none helps.

    Before the cross-node discount, the gain is unimodal in b's share (best at `ideal`): b's
    slots are scanned outwards from there while they could still beat the best."""
    num_gpus = load.size
    hot_node = gpu_node[hot]
    best_score = 0.0
    best_a = -1
    best_b = -1
    for r in range(num_gpus - 1):
        h = order[r]
        # A swap with h gains at most a quarter of peak - load[h]; one that gains at least
        # half of that is good enough (measured: the same moves, less scanning).
        if peak - load[h] <= 8.0 * best_score:
            break
        h_allowed = slot_node[h * per_gpu]
        if not hot_fits[h_allowed]:
            continue
        if not slots_sorted[h]:
            _sort_slots(by_slot_share[h], sorted_share[h], cur, share, h * per_gpu)
            slots_sorted[h] = True
        h_node = gpu_node[h]
        h_slots = by_slot_share[h]
        h_shares = sorted_share[h]
        first = 0  # first of h's slots with share <= ideal: ideal falls with share_x
        for i in range(per_gpu):  # the hot GPU's slots, heaviest first
            share_x = sorted_share[hot, i]
            if share_x <= 2.0 * best_score:
                break
            a = by_slot_share[hot, i]
            if not allowed[h_allowed, slot_group[a]]:
                continue
            x = cur[a]
            ideal = share_x - 0.5 * (peak - load[h])
            while first < per_gpu and h_shares[first] > ideal:
                first += 1
            for side in range(2):
                c = first - 1 if side == 0 else first
                while 0 <= c < per_gpu:
                    b = h_slots[c]
                    share_z = h_shares[c]
                    c += -1 if side == 0 else 1
                    new_peak = max(peak - share_x + share_z, load[h] + share_x - share_z)
                    gain = (peak - new_peak) / 2.0
                    if gain <= best_score:
                        break
                    z = cur[b]
                    if z == x or not allowed[slot_node[a], slot_group[b]]:
                        continue
                    if h_node != hot_node and (node_has[hot_node, z] == 0
                                               or node_has[h_node, x] == 0):
                        gain *= cross_factor
                    if gain > best_score:
                        best_score, best_a, best_b = gain, a, b
    return best_score, best_a, best_b


@numba.njit(cache=True, nogil=True, _nrt=False)
def _best_replacement(weight, cur, counts, share, next_share, by_share, load, head, nxt, peak,
                      hot, per_gpu, hot_node, slot_node, allowed, expert_group, node_has,
                      delta, touched, touched_list, cross_factor, best_score, best_a, best_b):
    """Improves on (best_score, best_a, best_b) with a slot a on the hot GPU taking expert y
    instead of x (one change; y by ascending share after the move). -> (score, a, y)"""
    for a in range(hot * per_gpu, (hot + 1) * per_gpu):
        x = cur[a]
        if counts[x] < 2:
            continue
        share_x = share[x]
        # x's other replicas all get heavier whatever y is: the gain is at most peak - that.
        x_bound = _others_bound(weight, counts, load, head, nxt, per_gpu, x, hot)
        for i in range(weight.size):
            if x_bound >= peak - best_score:
                break
            y = by_share[i]
            if peak - share_x + next_share[y] >= peak - best_score:
                break
            if y == x or not allowed[slot_node[a], expert_group[y]]:
                continue
            gain = peak - _touched_peak(weight, cur, counts, load, head, nxt, per_gpu, a, y,
                                        delta, touched, touched_list)
            if node_has[hot_node, y] == 0:
                gain *= cross_factor
            if gain > best_score:
                best_score, best_a, best_b = gain, a, y
    return best_score, best_a, best_b


@numba.njit(cache=True, nogil=True, _nrt=False)
def _best_new_replica(weight, cur, counts, share, next_share, load, order, head, nxt, peak,
                      max_share, hot, per_gpu, gpu_node, slot_node, allowed, expert_group,
                      node_has, delta, touched, touched_list, cross_factor, best_score, best_a,
                      best_b):
    """Improves on (best_score, best_a, best_b) with a slot a on one of the lightest GPUs taking
    a replica of an expert y on the hot GPU (one change). -> (score, a, y)"""
    num_gpus = load.size
    for j in range(per_gpu):
        y = cur[hot * per_gpu + j]
        dup = False
        for i in range(j):
            if cur[hot * per_gpu + i] == y:
                dup = True
        if dup:
            continue
        new_share_y = next_share[y]
        on_hot = 0
        for i in range(per_gpu):
            if cur[hot * per_gpu + i] == y:
                on_hot += 1
        # The hot GPU ends at least this heavy whichever slot takes y.
        hot_after = peak - on_hot * (share[y] - new_share_y)
        for r in range(min(num_gpus - 1, _LIGHT_GPUS)):
            g = order[r]
            if hot_after >= peak - best_score or \
                    load[g] + new_share_y - max_share >= peak - best_score:
                break
            factor = 1.0 if node_has[gpu_node[g], y] > 0 else cross_factor
            for a in range(g * per_gpu, (g + 1) * per_gpu):
                x = cur[a]
                if x == y or counts[x] < 2 or not allowed[slot_node[a], expert_group[y]]:
                    continue
                if load[g] - share[x] + new_share_y >= peak - best_score \
                        or hot_after >= peak - best_score:
                    continue
                gain = peak - _touched_peak(weight, cur, counts, load, head, nxt, per_gpu,
                                            a, y, delta, touched, touched_list)
                gain *= factor
                if gain > best_score:
                    best_score, best_a, best_b = gain, a, y
    return best_score, best_a, best_b


@numba.njit(cache=True, nogil=True, _nrt=False)
def _largest_shared(share, counts):
    """The largest share among experts with at least two replicas (0.0 if none)."""
    max_share = 0.0
    for e in range(share.size):
        if counts[e] >= 2:
            max_share = max(max_share, share[e])
    return max_share


@numba.njit(cache=True, nogil=True, _nrt=False)
def _apply_replacement(weight, cur, counts, share, next_share, by_share, slot_group, node_has,
                       expert_group, gpu_node, per_gpu, a, y):
    """Slot a takes expert y instead of its own: counts, shares and their order follow."""
    x = cur[a]
    cur[a] = y
    slot_group[a] = expert_group[y]
    counts[x] -= 1
    counts[y] += 1
    node = gpu_node[a // per_gpu]
    node_has[node, x] -= 1
    node_has[node, y] += 1
    share[x] = weight[x] / counts[x]
    share[y] = weight[y] / counts[y]
    next_share[x] = weight[x] / (counts[x] + 1)
    next_share[y] = weight[y] / (counts[y] + 1)
    resort(by_share, next_share, x)
    resort(by_share, next_share, y)


@numba.njit(cache=True, nogil=True, _nrt=False)
def _apply_swap(cur, share, load, order, slot_group, node_has, gpu_node, per_gpu, hot, a, b,
                slots_sorted):
    """Slots a (on the hot GPU) and b exchange experts. Counts are unchanged: two GPUs' loads
    move, and are re-sorted into the order."""
    x = cur[a]
    z = cur[b]
    cur[a] = z
    cur[b] = x
    slot_group[a], slot_group[b] = slot_group[b], slot_group[a]
    hot_node = gpu_node[hot]
    node_has[hot_node, x] -= 1
    node_has[hot_node, z] += 1
    node_has[gpu_node[b // per_gpu], z] -= 1
    node_has[gpu_node[b // per_gpu], x] += 1
    h = b // per_gpu
    load[hot] += share[z] - share[x]
    load[h] += share[x] - share[z]
    resort(order, load, hot)
    resort(order, load, h)
    slots_sorted[hot] = slots_sorted[h] = False


@numba.njit(cache=True, nogil=True)
def _repair_layer(weight, row, num_gpus, slot_node, gpu_node, allowed, expert_group, max_steps,
                  target, cross_factor, move_slot, move_expert, peak_after):
    """Greedy repair of one layer's mapping, recording each slot change.

    weight: [E]; row: [P] (not modified); slot_node: [P] node index into allowed [N, K] bool
    (may group k sit on node n); gpu_node: [G] physical node of each GPU; expert_group: [E]
    group of each expert (index into allowed). Writes up to max_steps slot changes into
    move_slot/move_expert [max_steps] and the peak after each into peak_after (inf in the
    middle of a two-slot swap). Each step lowers the hot GPU: a slot on it takes another
    expert, a slot elsewhere takes a replica of one of its experts, or two slots swap.
    A move counts by how far below the hot GPU's load every GPU it touches ends, per slot
    changed, times cross_factor when a slot receives an expert its node does not hold. Scans
    are ordered (experts by share, GPUs by load) so that they stop at the first candidate that
    cannot beat the best so far. Stops at the step budget, when no move helps, or once the peak
    is <= target. Returns the number of changes.
    """
    num_experts = weight.size
    per_gpu = row.size // num_gpus
    cur, counts, node_has, slot_group = _repair_state(row, num_gpus, gpu_node, expert_group,
                                                      num_experts)
    load = np.empty(num_gpus)
    delta = np.zeros(num_gpus)
    touched = np.zeros(num_gpus, np.bool_)
    touched_list = np.empty(num_gpus, np.int64)
    head = np.full(num_experts, -1, np.int64)
    nxt = np.full(row.size, -1, np.int64)
    share = weight / counts  # [E], kept up to date
    by_share = np.empty(0, np.int64)  # sorted when first needed: most layers only swap
    next_share = np.empty(0)  # [E] with by_share: each expert's share with one more replica
    steps = 0
    _gpu_sums(load, cur, share)
    hot_fits = np.zeros(allowed.shape[0], np.bool_)
    stale = True  # counts changed: rebuild the GPU order, re-sort slots when visited
    order = np.empty(num_gpus, np.int64)
    by_slot_share = np.empty((num_gpus, per_gpu), np.int64)  # each GPU's slots, heaviest first
    sorted_share = np.empty((num_gpus, per_gpu))  # ... and their shares
    slots_sorted = np.zeros(num_gpus, np.bool_)  # (sorted when first needed)
    while steps < max_steps:
        if stale:
            ascending_into(order, load)  # the hot GPU last
            slots_sorted[:] = False
            stale = False
        hot = order[num_gpus - 1]
        peak = load[hot]
        if peak <= target:
            break
        if not slots_sorted[hot]:
            _sort_slots(by_slot_share[hot], sorted_share[hot], cur, share, hot * per_gpu)
            slots_sorted[hot] = True
        _nodes_taking_hot(hot_fits, allowed, slot_group, hot, per_gpu)
        best_score, best_a, best_b = _best_swap(
            cur, share, load, order, peak, hot, per_gpu, gpu_node, slot_node, allowed,
            slot_group, node_has, hot_fits, by_slot_share, sorted_share, slots_sorted,
            cross_factor)
        swap = best_a >= 0
        # Moves that change replica counts are scanned only when no swap helps (they cost
        # far more to scan and are rarely the best).
        if not swap:
            if by_share.size == 0:
                next_share = weight / (counts + 1)
                by_share = np.argsort(next_share)
            _slot_lists(cur, head, nxt)
            best_score, best_a, best_b = _best_replacement(
                weight, cur, counts, share, next_share, by_share, load, head, nxt, peak, hot,
                per_gpu, gpu_node[hot], slot_node, allowed, expert_group, node_has, delta,
                touched, touched_list, cross_factor, best_score, best_a, best_b)
            best_score, best_a, best_b = _best_new_replica(
                weight, cur, counts, share, next_share, load, order, head, nxt, peak,
                _largest_shared(share, counts), hot, per_gpu, gpu_node, slot_node, allowed,
                expert_group, node_has, delta, touched, touched_list, cross_factor,
                best_score, best_a, best_b)
        if best_a < 0 or best_score <= peak * 1e-12:
            break
        if not swap:
            _apply_replacement(weight, cur, counts, share, next_share, by_share, slot_group,
                               node_has, expert_group, gpu_node, per_gpu, best_a, best_b)
            move_slot[steps] = best_a
            move_expert[steps] = best_b
            steps += 1
            stale = True
            _gpu_sums(load, cur, share)
            peak_after[steps - 1] = load.max()
        else:
            if steps + 2 > max_steps:
                break
            move_slot[steps] = best_a
            move_expert[steps] = cur[best_b]
            peak_after[steps] = _NO_PEAK
            move_slot[steps + 1] = best_b
            move_expert[steps + 1] = cur[best_a]
            steps += 2
            _apply_swap(cur, share, load, order, slot_group, node_has, gpu_node, per_gpu, hot,
                        best_a, best_b, slots_sorted)
            peak_after[steps - 1] = load[order[num_gpus - 1]]
    return steps


def repair(weight, current_phy2log, num_gpus, slot_node, gpu_node, allowed, group_size,
           max_steps, target, cross_factor):
    """Greedy repair trajectories of every layer.

    weight: [L, E]; current_phy2log: [L, P]; slot_node: [P] (index into allowed);
    gpu_node: [G] physical node; allowed: [L, N, K] bool; max_steps: [L] int64; target: [L]
    peak at which to stop; cross_factor: weight of a cross-node move's gain.
    -> (steps [L], move_slot [L, S], move_expert [L, S], peak_after [L, S]), S = max(max_steps).
    Layers in parallel where the plan's thread count allows (rows.run).
    """
    num_layers = weight.shape[0]
    width = max(1, int(max_steps.max())) if num_layers else 1
    move_slot = np.full((num_layers, width), -1, np.int64)
    move_expert = np.full((num_layers, width), -1, np.int64)
    peak_after = np.full((num_layers, width), np.inf)
    steps = np.zeros(num_layers, np.int64)
    expert_group = np.arange(weight.shape[1], dtype=np.int64) // group_size
    rows.run(_repair_rows, num_layers, weight, current_phy2log, num_gpus, slot_node, gpu_node,
             allowed, expert_group, max_steps, target, cross_factor, steps, move_slot,
             move_expert, peak_after)
    return steps, move_slot, move_expert, peak_after


@numba.njit(cache=True, nogil=True)
def _repair_rows(weight, current_phy2log, num_gpus, slot_node, gpu_node, allowed, expert_group,
                 max_steps, target, cross_factor, steps, move_slot, move_expert, peak_after,
                 start, stop):
    """repair's layers [start, stop), into steps [L] and the [L, S] move_slot, move_expert,
    peak_after."""
    for layer in range(start, stop):
        steps[layer] = _repair_layer(weight[layer], current_phy2log[layer], num_gpus, slot_node,
                                     gpu_node, allowed[layer], expert_group, max_steps[layer],
                                     target[layer], cross_factor, move_slot[layer],
                                     move_expert[layer], peak_after[layer])


# --------------------------------------------------------------------------- helpers


def _peaks(weight: np.ndarray, phy2log: np.ndarray, num_gpus: int) -> np.ndarray:
    """weight: [L, E], phy2log: [L, P] -> peak GPU load [L]."""
    return gpu_loads(weight, phy2log, num_gpus).max(1)


def transfers(current_phy2log: np.ndarray, phy2log: np.ndarray, num_nodes: int, num_gpus: int):
    """current_phy2log, phy2log: [L, P] -> (transfers [M, 4] int64 of (layer, slot, expert,
    source_slot), cross_node [M] bool). Sources hold the expert in the current mapping and are
    on the same GPU if possible, else the same node, else anywhere (lowest slot id)."""
    current = np.ascontiguousarray(current_phy2log, dtype=np.int64)
    new = np.ascontiguousarray(phy2log, dtype=np.int64)
    num_experts = int(max(current.max(initial=0), new.max(initial=0))) + 1
    moves, cross = _transfers(current, new, num_nodes, num_gpus, num_experts)
    return moves, cross


@numba.njit(cache=True, nogil=True)
def _transfers(current, new, num_nodes, num_gpus, num_experts):
    """See transfers. current, new: [L, P] int64 -> ([M, 4] int64, [M] bool)."""
    num_layers, num_slots = new.shape
    per_gpu = num_slots // num_gpus
    slot_gpu = np.arange(num_slots) // per_gpu
    gpu_node = np.arange(num_gpus) * num_nodes // num_gpus
    total = 0
    for layer in range(num_layers):
        for p in range(num_slots):
            if new[layer, p] != current[layer, p]:
                total += 1
    out = np.empty((total, 4), np.int64)
    cross = np.zeros(total, np.bool_)
    head = np.empty(num_experts, np.int64)  # lowest current slot of each expert ...
    nxt = np.empty(num_slots, np.int64)  # ... and the next one, ascending
    m = 0
    for layer in range(num_layers):
        _slot_lists(current[layer], head, nxt)
        for p in range(num_slots):
            e = new[layer, p]
            if e == current[layer, p]:
                continue
            gpu = slot_gpu[p]
            node = gpu_node[gpu]
            best, best_rank = -1, 3
            q = head[e]
            while q >= 0:
                g = slot_gpu[q]
                rank = 0 if g == gpu else (1 if gpu_node[g] == node else 2)
                if rank < best_rank:
                    best, best_rank = q, rank
                q = nxt[q]
            out[m, 0] = layer
            out[m, 1] = p
            out[m, 2] = e
            out[m, 3] = best
            cross[m] = best_rank == 2
            m += 1
    return out, cross


def slot_nodes(num_slots: int, num_nodes: int, num_gpus: int) -> np.ndarray:
    """Node of each slot, [P] int64: GPU g sits on node g * N // G (g // (G/N) when N divides G)."""
    return (np.arange(num_slots) // (num_slots // num_gpus)) * num_nodes // num_gpus


def _allowed(current_phy2log: np.ndarray, num_groups: int, num_nodes: int, num_experts: int,
             hierarchical: bool) -> np.ndarray:
    """[L, N, K] bool: may group k's experts sit on node n (global plans: anywhere)."""
    if not hierarchical or num_nodes == 1:
        return np.ones((current_phy2log.shape[0], 1, 1), bool)
    return _groups_on_nodes(current_phy2log, num_groups, num_nodes, num_experts // num_groups)


@numba.njit(cache=True, nogil=True)
def _groups_on_nodes(current, num_groups, num_nodes, group_size):
    """[L, N, K] bool: does node n hold an expert of group k (N divides the slots)."""
    num_layers, num_slots = current.shape
    per_node = num_slots // num_nodes
    group_of = np.arange(num_groups * group_size) // group_size
    held = np.zeros((num_layers, num_nodes, num_groups), np.bool_)
    for layer in range(num_layers):
        slot = 0
        for node in range(num_nodes):
            for _ in range(per_node):
                held[layer, node, group_of[current[layer, slot]]] = True
                slot += 1
    return held


@numba.njit(cache=True, nogil=True, _nrt=False)
def _apply_repairs(phy2log, count, move_slot, move_expert):
    """Applies each layer's first count [L] repair changes (move_slot, move_expert: [L, S])
    to phy2log [L, P] in place."""
    for layer in range(phy2log.shape[0]):
        for k in range(count[layer]):
            phy2log[layer, move_slot[layer, k]] = move_expert[layer, k]


# --------------------------------------------------------------------------- the stage driver


def _paired_option(weight, current, new, peak_new, tolerance, num_nodes, num_gpus, hierarchical):
    """At two slots per GPU, the current pairs re-paired under the new plan's counts (within each
    node for hierarchical plans): -> (paired [L, P], its peaks [L] (inf where none), its moves
    [L] (P + 1 where none)). Elsewhere no layer has this option."""
    num_layers, num_slots = current.shape
    if num_slots != 2 * num_gpus:
        return current, np.full(num_layers, np.inf), np.full(num_layers, num_slots + 1)
    paired, found = repair_pairs(weight, current, new, peak_new * (1.0 + tolerance),
                                 num_nodes if hierarchical else 1)
    return (paired, np.where(found, _peaks(weight, paired, num_gpus), np.inf),
            np.where(found, (paired != current).sum(1), num_slots + 1))


def _repair_trajectories(weight, current, new_moves, paired_moves, peak_cur, peak_new,
                         tolerance, per_layer, total, num_groups, num_nodes, num_gpus,
                         hierarchical):
    """Greedy repair of every layer: up to as many moves as the new plan (or the re-paired
    mapping) needs, or the budget, stopping early at the tolerance when no budget needs sharing
    out. -> repair()'s (steps, move_slot, move_expert, peak_after)."""
    num_layers, num_slots = current.shape
    num_experts = weight.shape[1]
    budgeted = per_layer > 0 or total > 0
    cap = np.maximum(np.minimum(new_moves, paired_moves) - 1, 0)
    if per_layer > 0:
        cap = np.minimum(cap, per_layer)
    if total > 0:
        cap = np.minimum(cap, total)
    need = peak_cur > peak_new * (1.0 + tolerance)
    cap = np.where(need | budgeted, cap, 0)
    target = peak_new * (1.0 + tolerance) if total == 0 else np.zeros(num_layers)
    group_size = num_experts // num_groups if hierarchical and num_nodes > 1 else num_experts
    slot_node = slot_nodes(num_slots, num_nodes, num_gpus) if hierarchical and num_nodes > 1 \
        else np.zeros(num_slots, np.int64)
    allowed = _allowed(current, num_groups, num_nodes, num_experts, hierarchical)
    gpu_node = np.arange(num_gpus, dtype=np.int64) * num_nodes // num_gpus
    return repair(weight, current, num_gpus, slot_node, gpu_node, allowed, group_size,
                  cap.astype(np.int64), target, CROSS_NODE_FACTOR)


def keep_current(new_phy2log: np.ndarray, current_phy2log: np.ndarray, load: np.ndarray,
                 num_nodes: int, num_gpus: int, options: MigrationOptions, *,
                 num_groups: int = 1, hierarchical: bool = False):
    """Trades the new plan's balance against moves away from the current mapping.

    new_phy2log, current_phy2log: [L, P] int64; load: [L, E] float64.
    hierarchical: the plan keeps each group's replicas on one node (relabel whole node blocks,
    repair within a node's groups). -> (phy2log [L, P] to serve, Migration).
    """
    num_slots = new_phy2log.shape[1]
    num_experts = load.shape[1]
    current = np.ascontiguousarray(current_phy2log, dtype=np.int64)
    weight = np.ascontiguousarray(load, dtype=np.float64)
    tolerance = max(float(options.tolerance), 0.0)
    per_layer = int(options.max_moved_slots_per_layer)
    total = int(options.max_moved_slots_total)

    new = np.ascontiguousarray(new_phy2log, dtype=np.int64)
    budgeted = per_layer > 0 or total > 0
    # Relabelling is the costliest stage, and where repair wins it is not needed: without a
    # budget, layers are relabelled only when chosen, and repair stops short of a lower bound
    # on the moves that the relabelled plan needs (the exact count when budgeted).
    relabelled = np.zeros_like(current)
    if budgeted:
        relabelled = relabel(new, current, num_experts, num_nodes, num_gpus, hierarchical)
        new_moves = (relabelled != current).sum(1)
    else:
        new_moves = num_slots - kept_slots_bound(new, current, num_experts, num_gpus)
    mean = weight.sum(1) / num_gpus
    peak_cur = _peaks(weight, current, num_gpus)
    peak_new = _peaks(weight, new, num_gpus)
    paired, peak_paired, paired_moves = _paired_option(weight, current, new, peak_new, tolerance,
                                                       num_nodes, num_gpus, hierarchical)
    steps, move_slot, move_expert, peak_after = _repair_trajectories(
        weight, current, new_moves, paired_moves, peak_cur, peak_new, tolerance, per_layer,
        total, num_groups, num_nodes, num_gpus, hierarchical)

    if not budgeted:
        kind, count, peak = _cheapest_within(peak_cur, peak_new, new_moves, steps, peak_after,
                                             peak_paired, paired_moves, tolerance)
        rows = np.flatnonzero((kind == 2) | (new_moves == 0))
        if rows.size:
            relabelled[rows] = relabel(new[rows], current[rows], num_experts, num_nodes,
                                       num_gpus, hierarchical)
            new_moves[rows] = (relabelled[rows] != current[rows]).sum(1)
    else:
        kind, count, peak = _budgeted(peak_cur, peak_new, new_moves, steps, peak_after,
                                      peak_paired, paired_moves, tolerance, per_layer, total)
    best_repair = peak_after.min(1, initial=np.inf)  # mid-swap entries and unused steps are inf
    has_better = (np.minimum(np.minimum(best_repair, peak_paired), peak_new) < peak_cur) \
        & (new_moves > 0)
    gain = balance_ratio(mean, peak) - balance_ratio(mean, peak_cur)
    kind = np.where((kind != 0) & (gain < options.min_balancedness_gain), 0, kind)
    kept_for_gain = int(((kind == 0) & has_better).sum())
    out = np.where((kind == 3)[:, None], paired, current)
    out = np.where((kind == 2)[:, None], relabelled, out)
    _apply_repairs(out, np.where(kind == 1, count, 0), move_slot, move_expert)
    return out, migration_summary(current, out, num_nodes, num_gpus, kept_for_gain, weight,
                                  peak_cur, np.where(kind == 0, peak_cur, peak))


@numba.njit(cache=True, nogil=True)
def _cheapest_within(peak_cur, peak_new, new_moves, steps, peak_after, peak_paired, paired_moves,
                     tolerance):
    """Per layer, the option with fewest moves whose peak is within tolerance of the best one:
    kind 0 the current mapping, 1 the first `count` repair changes, 2 the relabelled new plan,
    3 the re-paired current mapping.

    peak_cur, peak_new, new_moves (a lower bound): [L]; steps: [L]; peak_after: [L, S] (inf
    mid-swap); peak_paired, paired_moves: [L] (inf and P + 1 where there is none)
    -> (kind [L], count [L], peak [L]).
    """
    num_layers = peak_cur.size
    kind = np.full(num_layers, 2, np.int64)
    count = np.zeros(num_layers, np.int64)
    peak = peak_new.copy()
    for layer in range(num_layers):
        best = min(peak_cur[layer], peak_new[layer], peak_paired[layer])
        for k in range(steps[layer]):
            best = min(best, peak_after[layer, k])
        limit = best * (1.0 + tolerance)
        if peak_cur[layer] <= limit:
            kind[layer], peak[layer] = 0, peak_cur[layer]
            continue
        moves = new_moves[layer]
        for k in range(steps[layer]):
            if peak_after[layer, k] <= limit:
                kind[layer], count[layer], peak[layer] = 1, k + 1, peak_after[layer, k]
                moves = k + 1
                break
        if peak_paired[layer] <= limit and paired_moves[layer] < moves:
            kind[layer], count[layer], peak[layer] = 3, 0, peak_paired[layer]
    return kind, count, peak


@numba.njit(cache=True, nogil=True)
def _budgeted(peak_cur, peak_new, new_moves, steps, peak_after, peak_paired, paired_moves,
              tolerance, per_layer, total):
    """Like _cheapest_within, under a per-layer and/or total movement budget: the total is
    shared out greedily by peak reduction per moved slot. -> (kind [L], count [L], peak [L])."""
    num_layers = peak_cur.size
    width = peak_after.shape[1] + 3
    moves = np.empty((num_layers, width), np.int64)  # each layer's options ...
    peak = np.empty((num_layers, width))
    kind = np.empty((num_layers, width), np.int64)
    count = np.empty((num_layers, width), np.int64)
    size = np.empty(num_layers, np.int64)  # ... its first size[l] are its Pareto front
    for layer in range(num_layers):
        size[layer] = _front(layer, peak_cur, peak_new, new_moves, steps, peak_after,
                             peak_paired, paired_moves, per_layer, moves[layer], peak[layer],
                             kind[layer], count[layer])
    chosen = np.zeros(num_layers, np.int64)  # index into each layer's front
    if total > 0:
        budget = total
        # Each layer's best upgrade that fits the budget. The budget only shrinks, so one that
        # still fits stays the best: it is found again only for the layer upgraded and for
        # layers whose upgrade no longer fits.
        upgrade = np.empty(num_layers, np.int64)
        ratio = np.empty(num_layers)
        for layer in range(num_layers):
            upgrade[layer], ratio[layer] = _best_upgrade(moves[layer], peak[layer], size[layer],
                                                         chosen[layer], budget)
        while True:
            best = -1
            for layer in range(num_layers):
                if upgrade[layer] >= 0 and (best < 0 or ratio[layer] > ratio[best]):
                    best = layer
            if best < 0:
                break
            budget -= moves[best, upgrade[best]] - moves[best, chosen[best]]
            chosen[best] = upgrade[best]
            for layer in range(num_layers):
                if layer == best or (upgrade[layer] >= 0 and moves[layer, upgrade[layer]]
                                     - moves[layer, chosen[layer]] > budget):
                    upgrade[layer], ratio[layer] = _best_upgrade(
                        moves[layer], peak[layer], size[layer], chosen[layer], budget)
    out_kind = np.empty(num_layers, np.int64)
    out_count = np.empty(num_layers, np.int64)
    out_peak = np.empty(num_layers)
    for layer in range(num_layers):
        # Within what was granted (all of the front without a total), the cheapest option
        # inside the tolerance.
        granted = peak[layer, chosen[layer] if total > 0 else size[layer] - 1]
        i = 0
        while peak[layer, i] > granted * (1.0 + tolerance):
            i += 1
        out_kind[layer], out_count[layer], out_peak[layer] = \
            kind[layer, i], count[layer, i], peak[layer, i]
    return out_kind, out_count, out_peak


@numba.njit(cache=True, nogil=True, _nrt=False)
def _front(layer, peak_cur, peak_new, new_moves, steps, peak_after, peak_paired, paired_moves,
           per_layer, moves, peak, kind, count):
    """One layer's options (moves, peak, kind as in _cheapest_within, repair steps) within the
    per-layer budget, by moves then peak (stable), kept only where each lowers the peak: written
    to moves, peak, kind, count [width]. -> the front's size"""
    n = 0
    for k in range(-1, steps[layer] + 2):  # current, repair prefixes, new plan, re-paired
        if k == -1:
            m, p, t, c = 0, peak_cur[layer], 0, 0
        elif k < steps[layer]:
            m, p, t, c = k + 1, peak_after[layer, k], 1, k + 1
        elif k == steps[layer]:
            m, p, t, c = new_moves[layer], peak_new[layer], 2, 0
        else:
            m, p, t, c = paired_moves[layer], peak_paired[layer], 3, 0
        if (t == 1 or t == 3) and not np.isfinite(p):  # mid-swap, or no re-pairing
            continue
        if per_layer > 0 and m > per_layer:
            continue
        i = n  # insertion into the sorted options, after equal keys
        while i > 0 and (moves[i - 1] > m or (moves[i - 1] == m and peak[i - 1] > p)):
            moves[i], peak[i], kind[i], count[i] = moves[i - 1], peak[i - 1], kind[i - 1], \
                count[i - 1]
            i -= 1
        moves[i], peak[i], kind[i], count[i] = m, p, t, c
        n += 1
    size = 0
    for i in range(n):
        if size == 0 or peak[i] < peak[size - 1]:
            moves[size], peak[size], kind[size], count[size] = moves[i], peak[i], kind[i], count[i]
            size += 1
    return size


@numba.njit(cache=True, nogil=True, _nrt=False)
def _best_upgrade(moves, peak, size, at, budget):
    """The front entry after `at` with the largest peak reduction per extra move that fits the
    budget (the first among equals). -> (index or -1, ratio)"""
    best, best_ratio = -1, 0.0
    for index in range(at + 1, size):
        extra = moves[index] - moves[at]
        if extra > budget:
            break
        ratio = (peak[at] - peak[index]) / extra
        if ratio > best_ratio:
            best, best_ratio = index, ratio
    return best, best_ratio


def migration_summary(current_phy2log: np.ndarray, phy2log: np.ndarray, num_nodes: int,
                      num_gpus: int, kept_for_gain: int, load: np.ndarray,
                      peak_before: np.ndarray | None = None,
                      peak_after: np.ndarray | None = None) -> Migration:
    """The Migration record for moving current_phy2log [L, P] to phy2log [L, P], with each
    layer's balancedness (mean / peak GPU load) on load [L, E] before and after.
    peak_before, peak_after: [L], the two mappings' peak GPU loads if already known."""
    moves, cross = transfers(current_phy2log, phy2log, num_nodes, num_gpus)
    changed = (phy2log != current_phy2log).sum(1)
    mean = load.sum(1) / num_gpus
    if peak_before is None:
        peak_before = _peaks(load, current_phy2log, num_gpus)
    if peak_after is None:
        peak_after = _peaks(load, phy2log, num_gpus)
    before = balance_ratio(mean, peak_before)
    after = balance_ratio(mean, peak_after)
    return Migration(
        slots_changed=int(changed.sum()),
        cross_node_copies=int(cross.sum()),
        layer_slots_changed=changed.astype(np.int64),
        layer_changed=changed > 0,
        layers_kept_for_lack_of_gain=int(kept_for_gain),
        transfers=moves,
        transfer_cross_node=np.asarray(cross, dtype=bool),
        layer_balancedness_before=np.asarray(before, dtype=np.float64),
        layer_balancedness_after=np.asarray(after, dtype=np.float64),
    )


def current_node_of_group(current_phy2log: np.ndarray, num_groups: int, num_nodes: int,
                          num_experts: int) -> np.ndarray:
    """Node of each group in a current mapping [L, P] -> [L, K] int64; a layer whose mapping is
    not hierarchical (a group spans nodes, or a node holds other than K/N groups) gets -1s."""
    return _node_of_group(np.ascontiguousarray(current_phy2log, dtype=np.int64), num_groups,
                          num_nodes, num_experts // num_groups)


@numba.njit(cache=True, nogil=True)
def _node_of_group(current, num_groups, num_nodes, group_size):
    num_layers, num_slots = current.shape
    per_node = num_slots // num_nodes
    group_of = np.arange(num_groups * group_size) // group_size
    node_of = np.full((num_layers, num_groups), -1, np.int64)
    groups_on = np.zeros(num_nodes, np.int64)
    for layer in range(num_layers):
        valid = True
        for node in range(num_nodes):
            for slot in range(node * per_node, (node + 1) * per_node):
                group = group_of[current[layer, slot]]
                if node_of[layer, group] < 0:
                    node_of[layer, group] = node
                elif node_of[layer, group] != node:
                    valid = False
        groups_on[:] = 0
        for group in range(num_groups):
            if node_of[layer, group] >= 0:
                groups_on[node_of[layer, group]] += 1
        for node in range(num_nodes):
            valid = valid and groups_on[node] == num_groups // num_nodes
        if not valid:
            node_of[layer, :] = -1
    return node_of


def plan_keeping_nodes(weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int,
                       num_gpus: int, current_phy2log: np.ndarray, tolerance: float,
                       budget=None) -> np.ndarray:
    """The refined hierarchical plan, except that a layer keeps the current mapping's
    group-to-node assignment when its heaviest node is within tolerance of the best
    assignment's (then whole groups need not move between nodes).

    weight: [L, E] float64; current_phy2log: [L, P] -> phy2log [L, P] int64.
    budget: a budget.Budget for refinement, as `refined_plan` takes it.
    """
    kept = current_node_of_group(current_phy2log, num_groups, num_nodes, weight.shape[1])
    return refined_plan(weight, num_replicas, num_groups, num_nodes, num_gpus,
                        current_node_of_group=kept, keep_tolerance=tolerance, budget=budget)
