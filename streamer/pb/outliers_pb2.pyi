import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_CUMULATIVE: _ClassVar[Mode]
    MODE_EXPONENTIAL: _ClassVar[Mode]
MODE_UNSPECIFIED: Mode
MODE_CUMULATIVE: Mode
MODE_EXPONENTIAL: Mode

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
    __slots__ = ("threshold", "warmup", "mode", "alpha", "exclude_outliers", "series_ttl_seconds")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_OUTLIERS_FIELD_NUMBER: _ClassVar[int]
    SERIES_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    warmup: int
    mode: Mode
    alpha: float
    exclude_outliers: bool
    series_ttl_seconds: float
    def __init__(self, threshold: _Optional[float] = ..., warmup: _Optional[int] = ..., mode: _Optional[_Union[Mode, str]] = ..., alpha: _Optional[float] = ..., exclude_outliers: _Optional[bool] = ..., series_ttl_seconds: _Optional[float] = ...) -> None: ...

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
    __slots__ = ("index", "name", "value", "mean", "stddev", "zscore")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    ZSCORE_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    value: float
    mean: float
    stddev: float
    zscore: float
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., value: _Optional[float] = ..., mean: _Optional[float] = ..., stddev: _Optional[float] = ..., zscore: _Optional[float] = ...) -> None: ...

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
