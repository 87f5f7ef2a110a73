"""Frozen result types with numpy arrays, built from the service's responses."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from . import names
from .tensors import from_tensor
from .v1 import placement_pb2 as pb


def _frozen(a) -> np.ndarray:
    a = np.array(a)
    a.setflags(write=False)
    return a


def _mapping(t) -> np.ndarray:
    """A mapping Tensor as a read-only int64 array (the client asks the server for int32)."""
    a = from_tensor(t).astype(np.int64, copy=False)  # from_tensor's array is a fresh one
    a.setflags(write=False)
    return a


def _current_mapping_name(value: int) -> str:
    """pb.CURRENT_MAPPING_USED -> "used"; unspecified (or unknown to this client) -> ""."""
    try:
        name = pb.CurrentMapping.Name(value)
    except ValueError:
        return ""
    return "" if value == pb.CURRENT_MAPPING_UNSPECIFIED else name[len("CURRENT_MAPPING_"):].lower()


def log2phy_from_ranks(phy2log: np.ndarray, replica_rank: np.ndarray,
                       logcnt: np.ndarray) -> np.ndarray:
    """log2phy [L, E, W] (-1 padded, W = max logcnt) from its compact form: phy2log [L, P],
    replica_rank [L, P] (each slot's rank among its expert's replicas) and logcnt [L, E]."""
    phy2log = np.asarray(phy2log, dtype=np.int64)
    logcnt = np.asarray(logcnt, dtype=np.int64)
    layers, slots = phy2log.shape
    width = int(logcnt.max()) if logcnt.size else 1
    out = np.full((layers, logcnt.shape[1], width), -1, np.int64)
    out[np.arange(layers)[:, None], phy2log, np.asarray(replica_rank, dtype=np.int64)] = \
        np.arange(slots)[None, :]
    return out


def _log2phy(r) -> np.ndarray:
    """The response's padded log2phy, or the same rebuilt from its compact form."""
    if not r.HasField("replica_rank"):  # servers before the compact form always pad
        return _mapping(r.log2phy)
    a = log2phy_from_ranks(from_tensor(r.phy2log), from_tensor(r.replica_rank),
                           from_tensor(r.logcnt))
    a.setflags(write=False)
    return a


def _plain(value):
    """Converts arrays and nested results to JSON-ready Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


class _AsDict:
    def to_dict(self) -> dict:
        """The result as plain lists, numbers and strings (for JSON)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True, eq=False)
class Score(_AsDict):
    """How good a mapping is: per-layer balancedness (mean / max GPU load), peaks and bounds."""

    balancedness: float
    layer_balancedness: np.ndarray
    layer_max_load: np.ndarray
    layer_lower_bound: np.ndarray
    mean_gap: float
    max_gap: float
    window_balancedness: np.ndarray | None = None

    @property
    def layer_gap(self) -> np.ndarray:
        """Per-layer max GPU load / lower bound - 1."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.layer_lower_bound > 0,
                            self.layer_max_load / self.layer_lower_bound - 1.0, 0.0)

    @property
    def layer_balancedness_bound(self) -> np.ndarray:
        """Best balancedness any plan under the policy could reach per layer (mean / bound)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = self.layer_balancedness * self.layer_max_load
            return np.where(self.layer_lower_bound > 0, mean / self.layer_lower_bound, 1.0)

    @classmethod
    def from_proto(cls, s: pb.Score) -> "Score":
        return cls(
            balancedness=s.balancedness,
            layer_balancedness=_frozen(np.asarray(s.layer_balancedness, dtype=np.float64)),
            layer_max_load=_frozen(np.asarray(s.layer_max_load, dtype=np.float64)),
            layer_lower_bound=_frozen(np.asarray(s.layer_lower_bound, dtype=np.float64)),
            mean_gap=s.mean_gap,
            max_gap=s.max_gap,
            window_balancedness=(_frozen(np.asarray(s.window_balancedness, dtype=np.float64))
                                 if len(s.window_balancedness) else None),
        )


@dataclass(frozen=True, eq=False)
class Migration(_AsDict):
    """Movement from the current mapping; `transfers` [M, 4] holds rows of
    (layer, slot, expert, source_slot), `transfer_cross_node` [M] whether each crosses nodes."""

    slots_changed: int
    cross_node_copies: int
    layer_slots_changed: np.ndarray
    layer_changed: np.ndarray
    layers_kept_for_lack_of_gain: int
    transfers: np.ndarray
    transfer_cross_node: np.ndarray
    layer_balancedness_before: np.ndarray  # [L] mean / peak GPU load, current mapping
    layer_balancedness_after: np.ndarray  # [L] the same for the returned mapping

    @classmethod
    def from_proto(cls, m: pb.Migration) -> "Migration":
        if m.HasField("transfer_table"):  # TRANSFER_FORMAT_TABLE
            table = from_tensor(m.transfer_table).astype(np.int64).reshape(-1, 5)
            transfers, cross = table[:, :4], table[:, 4].astype(bool)
        else:  # one SlotTransfer message each (servers older than the table answer so)
            transfers = np.asarray([(t.layer, t.slot, t.expert, t.source_slot)
                                    for t in m.transfers], dtype=np.int64).reshape(-1, 4)
            cross = np.asarray([t.cross_node for t in m.transfers], dtype=bool)
        return cls(
            slots_changed=m.slots_changed,
            cross_node_copies=m.cross_node_copies,
            layer_slots_changed=_frozen(np.asarray(m.layer_slots_changed, dtype=np.int64)),
            layer_changed=_frozen(np.asarray(m.layer_changed, dtype=bool)),
            layers_kept_for_lack_of_gain=m.layers_kept_for_lack_of_gain,
            transfers=_frozen(np.ascontiguousarray(transfers)),
            transfer_cross_node=_frozen(cross),
            layer_balancedness_before=_frozen(np.asarray(m.layer_balancedness_before,
                                                         dtype=np.float64)),
            layer_balancedness_after=_frozen(np.asarray(m.layer_balancedness_after,
                                                        dtype=np.float64)),
        )


@dataclass(frozen=True, eq=False)
class Backtest(_AsDict):
    """How the adaptive objective chose: each candidate forecast's backtest balancedness [C]
    (planned on windows up to t, scored on t + 1), the forecast index each layer used [L]."""

    candidates: tuple
    balancedness: np.ndarray
    layer_choice: np.ndarray
    chosen: str
    steps: int
    adaptive_balancedness: float
    layers: int  # layers backtested

    @property
    def layer_forecast(self) -> list:
        """[L] the forecast name each layer was planned with."""
        return [self.candidates[i] for i in self.layer_choice]

    @classmethod
    def from_proto(cls, b: pb.Backtest) -> "Backtest":
        return cls(candidates=tuple(b.candidates),
                   balancedness=_frozen(np.asarray(b.balancedness, dtype=np.float64)),
                   layer_choice=_frozen(np.asarray(b.layer_choice, dtype=np.int64)),
                   chosen=b.chosen, steps=b.steps, adaptive_balancedness=b.adaptive_balancedness,
                   layers=b.layers)


@dataclass(frozen=True, eq=False)
class RebalanceResult(_AsDict):
    """A placement: phy2log [L, P], log2phy [L, E, W] (-1 padded), logcnt [L, E], and its scores."""

    phy2log: np.ndarray
    log2phy: np.ndarray
    logcnt: np.ndarray
    policy: str
    objective: str
    plan: Score
    current: Score | None
    migration: Migration | None
    compute_seconds: float
    device: str
    # What the server made of current_phy2log: "" (none given), "used", "empty_slots_filled"
    # or "ignored" (another slot count: planned from scratch); and how many -1 slots it had.
    current_mapping: str = ""
    current_empty_slots: int = 0
    backtest: Backtest | None = None  # for the adaptive objective
    # False when the request's time_budget_ms ran out before every layer was refined.
    refinement_finished: bool = True

    @classmethod
    def from_proto(cls, r: pb.RebalanceResponse) -> "RebalanceResult":
        return cls(
            phy2log=_mapping(r.phy2log),
            log2phy=_log2phy(r),
            logcnt=_mapping(r.logcnt),
            policy=names.policy_name(r.policy),
            objective=names.objective_name(r.objective),
            plan=Score.from_proto(r.plan),
            current=Score.from_proto(r.current) if r.HasField("current") else None,
            migration=Migration.from_proto(r.migration) if r.HasField("migration") else None,
            compute_seconds=r.compute_seconds,
            device=r.device,
            current_mapping=_current_mapping_name(r.current_mapping),
            current_empty_slots=r.current_empty_slots,
            backtest=Backtest.from_proto(r.backtest) if r.HasField("backtest") else None,
            refinement_finished=not r.time_budget_ran_out,
        )


@dataclass(frozen=True, eq=False)
class EvaluateResult(_AsDict):
    """The score of a given mapping and the policy whose lower bound it reports."""

    score: Score
    policy: str

    @classmethod
    def from_proto(cls, r: pb.EvaluateResponse) -> "EvaluateResult":
        return cls(score=Score.from_proto(r.score), policy=names.policy_name(r.policy))
