import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_BOTH: _ClassVar[Direction]
    DIRECTION_UP: _ClassVar[Direction]
    DIRECTION_DOWN: _ClassVar[Direction]

class Score(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORE_UNSPECIFIED: _ClassVar[Score]
    SCORE_ZSCORE: _ClassVar[Score]
    SCORE_LIKELIHOOD: _ClassVar[Score]

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_CUMULATIVE: _ClassVar[Mode]
    MODE_EXPONENTIAL: _ClassVar[Mode]

class WatchKinds(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_OUTLIERS: _ClassVar[WatchKinds]
    WATCH_EPISODES: _ClassVar[WatchKinds]
    WATCH_ALL: _ClassVar[WatchKinds]

class Origin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORIGIN_UNSPECIFIED: _ClassVar[Origin]
    ORIGIN_STREAM: _ClassVar[Origin]
    ORIGIN_OTLP: _ClassVar[Origin]
DIRECTION_UNSPECIFIED: Direction
DIRECTION_BOTH: Direction
DIRECTION_UP: Direction
DIRECTION_DOWN: Direction
SCORE_UNSPECIFIED: Score
SCORE_ZSCORE: Score
SCORE_LIKELIHOOD: Score
MODE_UNSPECIFIED: Mode
MODE_CUMULATIVE: Mode
MODE_EXPONENTIAL: Mode
WATCH_OUTLIERS: WatchKinds
WATCH_EPISODES: WatchKinds
WATCH_ALL: WatchKinds
ORIGIN_UNSPECIFIED: Origin
ORIGIN_STREAM: Origin
ORIGIN_OTLP: Origin

class Metric(_message.Message):
    __slots__ = ("time", "name", "value")
    TIME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    name: str
    value: float
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class DetectOptions(_message.Message):
    __slots__ = ("threshold", "warmup", "mode", "alpha", "exclude_outliers", "exclude_limit", "cooldown", "score", "likelihood_short", "likelihood_window", "likelihood_threshold", "likelihood_learning", "series_ttl_seconds", "min_deviation", "min_relative_deviation", "direction", "resolve_after")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_OUTLIERS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LIKELIHOOD_SHORT_FIELD_NUMBER: _ClassVar[int]
    LIKELIHOOD_WINDOW_FIELD_NUMBER: _ClassVar[int]
    LIKELIHOOD_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LIKELIHOOD_LEARNING_FIELD_NUMBER: _ClassVar[int]
    SERIES_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MIN_DEVIATION_FIELD_NUMBER: _ClassVar[int]
    MIN_RELATIVE_DEVIATION_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    RESOLVE_AFTER_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    warmup: int
    mode: Mode
    alpha: float
    exclude_outliers: bool
    exclude_limit: int
    cooldown: int
    score: Score
    likelihood_short: int
    likelihood_window: int
    likelihood_threshold: float
    likelihood_learning: int
    series_ttl_seconds: float
    min_deviation: float
    min_relative_deviation: float
    direction: Direction
    resolve_after: int
    def __init__(self, threshold: _Optional[float] = ..., warmup: _Optional[int] = ..., mode: _Optional[_Union[Mode, str]] = ..., alpha: _Optional[float] = ..., exclude_outliers: _Optional[bool] = ..., exclude_limit: _Optional[int] = ..., cooldown: _Optional[int] = ..., score: _Optional[_Union[Score, str]] = ..., likelihood_short: _Optional[int] = ..., likelihood_window: _Optional[int] = ..., likelihood_threshold: _Optional[float] = ..., likelihood_learning: _Optional[int] = ..., series_ttl_seconds: _Optional[float] = ..., min_deviation: _Optional[float] = ..., min_relative_deviation: _Optional[float] = ..., direction: _Optional[_Union[Direction, str]] = ..., resolve_after: _Optional[int] = ...) -> None: ...

class OutliersRequest(_message.Message):
    __slots__ = ("metrics", "options", "session", "seq")
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    options: DetectOptions
    session: str
    seq: int
    def __init__(self, metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., options: _Optional[_Union[DetectOptions, _Mapping]] = ..., session: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class Outlier(_message.Message):
    __slots__ = ("index", "name", "value", "mean", "stddev", "zscore", "tail_probability", "rule")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    ZSCORE_FIELD_NUMBER: _ClassVar[int]
    TAIL_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    value: float
    mean: float
    stddev: float
    zscore: float
    tail_probability: float
    rule: str
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., value: _Optional[float] = ..., mean: _Optional[float] = ..., stddev: _Optional[float] = ..., zscore: _Optional[float] = ..., tail_probability: _Optional[float] = ..., rule: _Optional[str] = ...) -> None: ...

class OutliersResponse(_message.Message):
    __slots__ = ("indices", "outliers", "batch", "duplicate", "applied_seq", "durable_seq", "ephemeral", "forgotten")
    INDICES_FIELD_NUMBER: _ClassVar[int]
    OUTLIERS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    DURABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_FIELD_NUMBER: _ClassVar[int]
    FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    outliers: _containers.RepeatedCompositeFieldContainer[Outlier]
    batch: int
    duplicate: bool
    applied_seq: int
    durable_seq: int
    ephemeral: bool
    forgotten: bool
    def __init__(self, indices: _Optional[_Iterable[int]] = ..., outliers: _Optional[_Iterable[_Union[Outlier, _Mapping]]] = ..., batch: _Optional[int] = ..., duplicate: _Optional[bool] = ..., applied_seq: _Optional[int] = ..., durable_seq: _Optional[int] = ..., ephemeral: _Optional[bool] = ..., forgotten: _Optional[bool] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("session", "prefix", "kinds")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    session: str
    prefix: str
    kinds: WatchKinds
    def __init__(self, session: _Optional[str] = ..., prefix: _Optional[str] = ..., kinds: _Optional[_Union[WatchKinds, str]] = ...) -> None: ...

class OutlierEvent(_message.Message):
    __slots__ = ("series", "value", "time", "mean", "stddev", "zscore", "origin", "session", "rule")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    ZSCORE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    series: str
    value: float
    time: _timestamp_pb2.Timestamp
    mean: float
    stddev: float
    zscore: float
    origin: Origin
    session: str
    rule: str
    def __init__(self, series: _Optional[str] = ..., value: _Optional[float] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., mean: _Optional[float] = ..., stddev: _Optional[float] = ..., zscore: _Optional[float] = ..., origin: _Optional[_Union[Origin, str]] = ..., session: _Optional[str] = ..., rule: _Optional[str] = ...) -> None: ...

class Dropped(_message.Message):
    __slots__ = ("count", "total")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    count: int
    total: int
    def __init__(self, count: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("outlier", "dropped", "episode")
    OUTLIER_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    outlier: OutlierEvent
    dropped: Dropped
    episode: EpisodeEvent
    def __init__(self, outlier: _Optional[_Union[OutlierEvent, _Mapping]] = ..., dropped: _Optional[_Union[Dropped, _Mapping]] = ..., episode: _Optional[_Union[EpisodeEvent, _Mapping]] = ...) -> None: ...

class EpisodeEvent(_message.Message):
    __slots__ = ("kind", "id", "episode", "series", "source", "session", "origin", "started", "ended", "count", "value", "mean", "stddev", "zscore", "peak_value", "peak_zscore", "rule")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[EpisodeEvent.Kind]
        OPENED: _ClassVar[EpisodeEvent.Kind]
        UPDATED: _ClassVar[EpisodeEvent.Kind]
        RESOLVED: _ClassVar[EpisodeEvent.Kind]
    KIND_UNSPECIFIED: EpisodeEvent.Kind
    OPENED: EpisodeEvent.Kind
    UPDATED: EpisodeEvent.Kind
    RESOLVED: EpisodeEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    ZSCORE_FIELD_NUMBER: _ClassVar[int]
    PEAK_VALUE_FIELD_NUMBER: _ClassVar[int]
    PEAK_ZSCORE_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    kind: EpisodeEvent.Kind
    id: str
    episode: str
    series: str
    source: str
    session: str
    origin: Origin
    started: _timestamp_pb2.Timestamp
    ended: _timestamp_pb2.Timestamp
    count: int
    value: float
    mean: float
    stddev: float
    zscore: float
    peak_value: float
    peak_zscore: float
    rule: str
    def __init__(self, kind: _Optional[_Union[EpisodeEvent.Kind, str]] = ..., id: _Optional[str] = ..., episode: _Optional[str] = ..., series: _Optional[str] = ..., source: _Optional[str] = ..., session: _Optional[str] = ..., origin: _Optional[_Union[Origin, str]] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., count: _Optional[int] = ..., value: _Optional[float] = ..., mean: _Optional[float] = ..., stddev: _Optional[float] = ..., zscore: _Optional[float] = ..., peak_value: _Optional[float] = ..., peak_zscore: _Optional[float] = ..., rule: _Optional[str] = ...) -> None: ...
