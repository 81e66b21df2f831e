from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecordKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECORD_KIND_UNSPECIFIED: _ClassVar[RecordKind]
    RECORD_KIND_RUN: _ClassVar[RecordKind]
    RECORD_KIND_CONFIG: _ClassVar[RecordKind]
    RECORD_KIND_ROW: _ClassVar[RecordKind]
    RECORD_KIND_SUMMARY: _ClassVar[RecordKind]
    RECORD_KIND_STATS: _ClassVar[RecordKind]
    RECORD_KIND_EXIT: _ClassVar[RecordKind]
    RECORD_KIND_SYSTEM: _ClassVar[RecordKind]
    RECORD_KIND_CONSOLE: _ClassVar[RecordKind]
    RECORD_KIND_FILE: _ClassVar[RecordKind]
    RECORD_KIND_MEDIA: _ClassVar[RecordKind]
    RECORD_KIND_METRIC: _ClassVar[RecordKind]
    RECORD_KIND_ALERT: _ClassVar[RecordKind]

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_NONE: _ClassVar[Codec]
    CODEC_ZSTD: _ClassVar[Codec]
RECORD_KIND_UNSPECIFIED: RecordKind
RECORD_KIND_RUN: RecordKind
RECORD_KIND_CONFIG: RecordKind
RECORD_KIND_ROW: RecordKind
RECORD_KIND_SUMMARY: RecordKind
RECORD_KIND_STATS: RecordKind
RECORD_KIND_EXIT: RecordKind
RECORD_KIND_SYSTEM: RecordKind
RECORD_KIND_CONSOLE: RecordKind
RECORD_KIND_FILE: RecordKind
RECORD_KIND_MEDIA: RecordKind
RECORD_KIND_METRIC: RecordKind
RECORD_KIND_ALERT: RecordKind
CODEC_NONE: Codec
CODEC_ZSTD: Codec

class Open(_message.Message):
    __slots__ = ("entity", "project", "run_id", "writer_id", "resume", "protocol_version", "member")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    entity: str
    project: str
    run_id: str
    writer_id: str
    resume: str
    protocol_version: int
    member: Member
    def __init__(self, entity: _Optional[str] = ..., project: _Optional[str] = ..., run_id: _Optional[str] = ..., writer_id: _Optional[str] = ..., resume: _Optional[str] = ..., protocol_version: _Optional[int] = ..., member: _Optional[_Union[Member, _Mapping]] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("rank", "node", "world_size", "node_count", "local_rank", "node_writer", "host")
    RANK_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    NODE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    NODE_WRITER_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    rank: int
    node: int
    world_size: int
    node_count: int
    local_rank: int
    node_writer: bool
    host: str
    def __init__(self, rank: _Optional[int] = ..., node: _Optional[int] = ..., world_size: _Optional[int] = ..., node_count: _Optional[int] = ..., local_rank: _Optional[int] = ..., node_writer: bool = ..., host: _Optional[str] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("first_seq", "last_seq", "codec", "crc32c", "payload", "record_count")
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    first_seq: int
    last_seq: int
    codec: Codec
    crc32c: int
    payload: bytes
    record_count: int
    def __init__(self, first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., codec: _Optional[_Union[Codec, str]] = ..., crc32c: _Optional[int] = ..., payload: _Optional[bytes] = ..., record_count: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("time",)
    TIME_FIELD_NUMBER: _ClassVar[int]
    time: float
    def __init__(self, time: _Optional[float] = ...) -> None: ...

class Lost(_message.Message):
    __slots__ = ("first_seq", "last_seq", "reason")
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    first_seq: int
    last_seq: int
    reason: str
    def __init__(self, first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("open", "batch", "heartbeat", "lost")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    open: Open
    batch: Batch
    heartbeat: Heartbeat
    lost: Lost
    def __init__(self, open: _Optional[_Union[Open, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., lost: _Optional[_Union[Lost, _Mapping]] = ...) -> None: ...

class Opened(_message.Message):
    __slots__ = ("acked_seq", "resumed", "last_step", "run_path", "protocol_version")
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    RUN_PATH_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    acked_seq: int
    resumed: bool
    last_step: int
    run_path: str
    protocol_version: int
    def __init__(self, acked_seq: _Optional[int] = ..., resumed: bool = ..., last_step: _Optional[int] = ..., run_path: _Optional[str] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("opened", "ack")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    opened: Opened
    ack: Ack
    def __init__(self, opened: _Optional[_Union[Opened, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...
