from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]

class Policy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_UNSPECIFIED: _ClassVar[Policy]
    POLICY_AUTO: _ClassVar[Policy]
    POLICY_HIERARCHICAL: _ClassVar[Policy]
    POLICY_GLOBAL: _ClassVar[Policy]
    POLICY_DEEPSEEK: _ClassVar[Policy]

class Objective(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBJECTIVE_UNSPECIFIED: _ClassVar[Objective]
    OBJECTIVE_SUM: _ClassVar[Objective]
    OBJECTIVE_EXPECTED_PEAK: _ClassVar[Objective]
    OBJECTIVE_RECENCY: _ClassVar[Objective]
    OBJECTIVE_ROBUST: _ClassVar[Objective]
    OBJECTIVE_ADAPTIVE: _ClassVar[Objective]

class Log2PhyFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG2PHY_FORMAT_UNSPECIFIED: _ClassVar[Log2PhyFormat]
    LOG2PHY_FORMAT_PADDED: _ClassVar[Log2PhyFormat]
    LOG2PHY_FORMAT_COMPACT: _ClassVar[Log2PhyFormat]

class TransferFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_FORMAT_UNSPECIFIED: _ClassVar[TransferFormat]
    TRANSFER_FORMAT_MESSAGES: _ClassVar[TransferFormat]
    TRANSFER_FORMAT_TABLE: _ClassVar[TransferFormat]

class CurrentMapping(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CURRENT_MAPPING_UNSPECIFIED: _ClassVar[CurrentMapping]
    CURRENT_MAPPING_USED: _ClassVar[CurrentMapping]
    CURRENT_MAPPING_EMPTY_SLOTS_FILLED: _ClassVar[CurrentMapping]
    CURRENT_MAPPING_IGNORED: _ClassVar[CurrentMapping]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
DTYPE_INT32: DType
DTYPE_INT64: DType
POLICY_UNSPECIFIED: Policy
POLICY_AUTO: Policy
POLICY_HIERARCHICAL: Policy
POLICY_GLOBAL: Policy
POLICY_DEEPSEEK: Policy
OBJECTIVE_UNSPECIFIED: Objective
OBJECTIVE_SUM: Objective
OBJECTIVE_EXPECTED_PEAK: Objective
OBJECTIVE_RECENCY: Objective
OBJECTIVE_ROBUST: Objective
OBJECTIVE_ADAPTIVE: Objective
LOG2PHY_FORMAT_UNSPECIFIED: Log2PhyFormat
LOG2PHY_FORMAT_PADDED: Log2PhyFormat
LOG2PHY_FORMAT_COMPACT: Log2PhyFormat
TRANSFER_FORMAT_UNSPECIFIED: TransferFormat
TRANSFER_FORMAT_MESSAGES: TransferFormat
TRANSFER_FORMAT_TABLE: TransferFormat
CURRENT_MAPPING_UNSPECIFIED: CurrentMapping
CURRENT_MAPPING_USED: CurrentMapping
CURRENT_MAPPING_EMPTY_SLOTS_FILLED: CurrentMapping
CURRENT_MAPPING_IGNORED: CurrentMapping

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "float_values", "int_values")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUES_FIELD_NUMBER: _ClassVar[int]
    INT_VALUES_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    float_values: _containers.RepeatedScalarFieldContainer[float]
    int_values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., float_values: _Optional[_Iterable[float]] = ..., int_values: _Optional[_Iterable[int]] = ...) -> None: ...

class Topology(_message.Message):
    __slots__ = ("num_replicas", "num_groups", "num_nodes", "num_gpus", "num_logical_experts")
    NUM_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    NUM_GROUPS_FIELD_NUMBER: _ClassVar[int]
    NUM_NODES_FIELD_NUMBER: _ClassVar[int]
    NUM_GPUS_FIELD_NUMBER: _ClassVar[int]
    NUM_LOGICAL_EXPERTS_FIELD_NUMBER: _ClassVar[int]
    num_replicas: int
    num_groups: int
    num_nodes: int
    num_gpus: int
    num_logical_experts: int
    def __init__(self, num_replicas: _Optional[int] = ..., num_groups: _Optional[int] = ..., num_nodes: _Optional[int] = ..., num_gpus: _Optional[int] = ..., num_logical_experts: _Optional[int] = ...) -> None: ...

class MigrationOptions(_message.Message):
    __slots__ = ("from_scratch", "max_moved_slots_per_layer", "max_moved_slots_total", "min_balancedness_gain")
    FROM_SCRATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_MOVED_SLOTS_PER_LAYER_FIELD_NUMBER: _ClassVar[int]
    MAX_MOVED_SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MIN_BALANCEDNESS_GAIN_FIELD_NUMBER: _ClassVar[int]
    from_scratch: bool
    max_moved_slots_per_layer: int
    max_moved_slots_total: int
    min_balancedness_gain: float
    def __init__(self, from_scratch: bool = ..., max_moved_slots_per_layer: _Optional[int] = ..., max_moved_slots_total: _Optional[int] = ..., min_balancedness_gain: _Optional[float] = ...) -> None: ...

class HistoryOptions(_message.Message):
    __slots__ = ("objective", "half_life", "robust_k")
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    HALF_LIFE_FIELD_NUMBER: _ClassVar[int]
    ROBUST_K_FIELD_NUMBER: _ClassVar[int]
    objective: Objective
    half_life: float
    robust_k: float
    def __init__(self, objective: _Optional[_Union[Objective, str]] = ..., half_life: _Optional[float] = ..., robust_k: _Optional[float] = ...) -> None: ...

class RebalanceRequest(_message.Message):
    __slots__ = ("model", "topology", "policy", "expert_loads", "slot_loads", "current_phy2log", "migration", "history", "mapping_dtype", "log2phy_format", "time_budget_ms", "transfer_format")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    EXPERT_LOADS_FIELD_NUMBER: _ClassVar[int]
    SLOT_LOADS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PHY2LOG_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    MAPPING_DTYPE_FIELD_NUMBER: _ClassVar[int]
    LOG2PHY_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TIME_BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FORMAT_FIELD_NUMBER: _ClassVar[int]
    model: str
    topology: Topology
    policy: Policy
    expert_loads: Tensor
    slot_loads: Tensor
    current_phy2log: Tensor
    migration: MigrationOptions
    history: HistoryOptions
    mapping_dtype: DType
    log2phy_format: Log2PhyFormat
    time_budget_ms: float
    transfer_format: TransferFormat
    def __init__(self, model: _Optional[str] = ..., topology: _Optional[_Union[Topology, _Mapping]] = ..., policy: _Optional[_Union[Policy, str]] = ..., expert_loads: _Optional[_Union[Tensor, _Mapping]] = ..., slot_loads: _Optional[_Union[Tensor, _Mapping]] = ..., current_phy2log: _Optional[_Union[Tensor, _Mapping]] = ..., migration: _Optional[_Union[MigrationOptions, _Mapping]] = ..., history: _Optional[_Union[HistoryOptions, _Mapping]] = ..., mapping_dtype: _Optional[_Union[DType, str]] = ..., log2phy_format: _Optional[_Union[Log2PhyFormat, str]] = ..., time_budget_ms: _Optional[float] = ..., transfer_format: _Optional[_Union[TransferFormat, str]] = ...) -> None: ...

class Score(_message.Message):
    __slots__ = ("balancedness", "layer_balancedness", "layer_max_load", "layer_lower_bound", "mean_gap", "max_gap", "window_balancedness")
    BALANCEDNESS_FIELD_NUMBER: _ClassVar[int]
    LAYER_BALANCEDNESS_FIELD_NUMBER: _ClassVar[int]
    LAYER_MAX_LOAD_FIELD_NUMBER: _ClassVar[int]
    LAYER_LOWER_BOUND_FIELD_NUMBER: _ClassVar[int]
    MEAN_GAP_FIELD_NUMBER: _ClassVar[int]
    MAX_GAP_FIELD_NUMBER: _ClassVar[int]
    WINDOW_BALANCEDNESS_FIELD_NUMBER: _ClassVar[int]
    balancedness: float
    layer_balancedness: _containers.RepeatedScalarFieldContainer[float]
    layer_max_load: _containers.RepeatedScalarFieldContainer[float]
    layer_lower_bound: _containers.RepeatedScalarFieldContainer[float]
    mean_gap: float
    max_gap: float
    window_balancedness: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, balancedness: _Optional[float] = ..., layer_balancedness: _Optional[_Iterable[float]] = ..., layer_max_load: _Optional[_Iterable[float]] = ..., layer_lower_bound: _Optional[_Iterable[float]] = ..., mean_gap: _Optional[float] = ..., max_gap: _Optional[float] = ..., window_balancedness: _Optional[_Iterable[float]] = ...) -> None: ...

class SlotTransfer(_message.Message):
    __slots__ = ("layer", "slot", "expert", "source_slot", "cross_node")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    EXPERT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SLOT_FIELD_NUMBER: _ClassVar[int]
    CROSS_NODE_FIELD_NUMBER: _ClassVar[int]
    layer: int
    slot: int
    expert: int
    source_slot: int
    cross_node: bool
    def __init__(self, layer: _Optional[int] = ..., slot: _Optional[int] = ..., expert: _Optional[int] = ..., source_slot: _Optional[int] = ..., cross_node: bool = ...) -> None: ...

class Migration(_message.Message):
    __slots__ = ("slots_changed", "cross_node_copies", "layer_slots_changed", "layer_changed", "layers_kept_for_lack_of_gain", "transfers", "layer_balancedness_before", "layer_balancedness_after", "transfer_table")
    SLOTS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    CROSS_NODE_COPIES_FIELD_NUMBER: _ClassVar[int]
    LAYER_SLOTS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    LAYER_CHANGED_FIELD_NUMBER: _ClassVar[int]
    LAYERS_KEPT_FOR_LACK_OF_GAIN_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    LAYER_BALANCEDNESS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    LAYER_BALANCEDNESS_AFTER_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_TABLE_FIELD_NUMBER: _ClassVar[int]
    slots_changed: int
    cross_node_copies: int
    layer_slots_changed: _containers.RepeatedScalarFieldContainer[int]
    layer_changed: _containers.RepeatedScalarFieldContainer[bool]
    layers_kept_for_lack_of_gain: int
    transfers: _containers.RepeatedCompositeFieldContainer[SlotTransfer]
    layer_balancedness_before: _containers.RepeatedScalarFieldContainer[float]
    layer_balancedness_after: _containers.RepeatedScalarFieldContainer[float]
    transfer_table: Tensor
    def __init__(self, slots_changed: _Optional[int] = ..., cross_node_copies: _Optional[int] = ..., layer_slots_changed: _Optional[_Iterable[int]] = ..., layer_changed: _Optional[_Iterable[bool]] = ..., layers_kept_for_lack_of_gain: _Optional[int] = ..., transfers: _Optional[_Iterable[_Union[SlotTransfer, _Mapping]]] = ..., layer_balancedness_before: _Optional[_Iterable[float]] = ..., layer_balancedness_after: _Optional[_Iterable[float]] = ..., transfer_table: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class RebalanceResponse(_message.Message):
    __slots__ = ("phy2log", "log2phy", "logcnt", "policy", "plan", "current", "migration", "objective", "compute_seconds", "device", "current_mapping", "current_empty_slots", "log2phy_format", "replica_rank", "backtest", "time_budget_ran_out")
    PHY2LOG_FIELD_NUMBER: _ClassVar[int]
    LOG2PHY_FIELD_NUMBER: _ClassVar[int]
    LOGCNT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_MAPPING_FIELD_NUMBER: _ClassVar[int]
    CURRENT_EMPTY_SLOTS_FIELD_NUMBER: _ClassVar[int]
    LOG2PHY_FORMAT_FIELD_NUMBER: _ClassVar[int]
    REPLICA_RANK_FIELD_NUMBER: _ClassVar[int]
    BACKTEST_FIELD_NUMBER: _ClassVar[int]
    TIME_BUDGET_RAN_OUT_FIELD_NUMBER: _ClassVar[int]
    phy2log: Tensor
    log2phy: Tensor
    logcnt: Tensor
    policy: Policy
    plan: Score
    current: Score
    migration: Migration
    objective: Objective
    compute_seconds: float
    device: str
    current_mapping: CurrentMapping
    current_empty_slots: int
    log2phy_format: Log2PhyFormat
    replica_rank: Tensor
    backtest: Backtest
    time_budget_ran_out: bool
    def __init__(self, phy2log: _Optional[_Union[Tensor, _Mapping]] = ..., log2phy: _Optional[_Union[Tensor, _Mapping]] = ..., logcnt: _Optional[_Union[Tensor, _Mapping]] = ..., policy: _Optional[_Union[Policy, str]] = ..., plan: _Optional[_Union[Score, _Mapping]] = ..., current: _Optional[_Union[Score, _Mapping]] = ..., migration: _Optional[_Union[Migration, _Mapping]] = ..., objective: _Optional[_Union[Objective, str]] = ..., compute_seconds: _Optional[float] = ..., device: _Optional[str] = ..., current_mapping: _Optional[_Union[CurrentMapping, str]] = ..., current_empty_slots: _Optional[int] = ..., log2phy_format: _Optional[_Union[Log2PhyFormat, str]] = ..., replica_rank: _Optional[_Union[Tensor, _Mapping]] = ..., backtest: _Optional[_Union[Backtest, _Mapping]] = ..., time_budget_ran_out: bool = ...) -> None: ...

class Backtest(_message.Message):
    __slots__ = ("candidates", "balancedness", "layer_choice", "chosen", "steps", "adaptive_balancedness", "layers")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    BALANCEDNESS_FIELD_NUMBER: _ClassVar[int]
    LAYER_CHOICE_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_BALANCEDNESS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedScalarFieldContainer[str]
    balancedness: _containers.RepeatedScalarFieldContainer[float]
    layer_choice: _containers.RepeatedScalarFieldContainer[int]
    chosen: str
    steps: int
    adaptive_balancedness: float
    layers: int
    def __init__(self, candidates: _Optional[_Iterable[str]] = ..., balancedness: _Optional[_Iterable[float]] = ..., layer_choice: _Optional[_Iterable[int]] = ..., chosen: _Optional[str] = ..., steps: _Optional[int] = ..., adaptive_balancedness: _Optional[float] = ..., layers: _Optional[int] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("topology", "expert_loads", "phy2log", "policy")
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    EXPERT_LOADS_FIELD_NUMBER: _ClassVar[int]
    PHY2LOG_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    topology: Topology
    expert_loads: Tensor
    phy2log: Tensor
    policy: Policy
    def __init__(self, topology: _Optional[_Union[Topology, _Mapping]] = ..., expert_loads: _Optional[_Union[Tensor, _Mapping]] = ..., phy2log: _Optional[_Union[Tensor, _Mapping]] = ..., policy: _Optional[_Union[Policy, str]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("score", "policy")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    score: Score
    policy: Policy
    def __init__(self, score: _Optional[_Union[Score, _Mapping]] = ..., policy: _Optional[_Union[Policy, str]] = ...) -> None: ...
