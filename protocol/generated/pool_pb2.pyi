# mypy: disable-error-code="type-arg"
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Gpu(_message.Message):
    __slots__ = ("index", "name", "uuid", "total_bytes", "free_bytes", "utilization_pct")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_PCT_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    uuid: str
    total_bytes: int
    free_bytes: int
    utilization_pct: float
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., uuid: _Optional[str] = ..., total_bytes: _Optional[int] = ..., free_bytes: _Optional[int] = ..., utilization_pct: _Optional[float] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "lease_id", "pid", "vram_used_bytes", "client", "state", "resident_bytes", "paged_bytes", "idle_s", "page_command_id", "page_result", "unpageable_bytes", "park_blocker")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    VRAM_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAGED_BYTES_FIELD_NUMBER: _ClassVar[int]
    IDLE_S_FIELD_NUMBER: _ClassVar[int]
    PAGE_COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_RESULT_FIELD_NUMBER: _ClassVar[int]
    UNPAGEABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARK_BLOCKER_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    lease_id: str
    pid: int
    vram_used_bytes: int
    client: str
    state: str
    resident_bytes: int
    paged_bytes: int
    idle_s: float
    page_command_id: str
    page_result: str
    unpageable_bytes: int
    park_blocker: str
    def __init__(self, session_id: _Optional[str] = ..., lease_id: _Optional[str] = ..., pid: _Optional[int] = ..., vram_used_bytes: _Optional[int] = ..., client: _Optional[str] = ..., state: _Optional[str] = ..., resident_bytes: _Optional[int] = ..., paged_bytes: _Optional[int] = ..., idle_s: _Optional[float] = ..., page_command_id: _Optional[str] = ..., page_result: _Optional[str] = ..., unpageable_bytes: _Optional[int] = ..., park_blocker: _Optional[str] = ...) -> None: ...

class EnrolRequest(_message.Message):
    __slots__ = ("node_id", "enrol_token")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENROL_TOKEN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    enrol_token: str
    def __init__(self, node_id: _Optional[str] = ..., enrol_token: _Optional[str] = ...) -> None: ...

class EnrolReply(_message.Message):
    __slots__ = ("node_id", "credential")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    credential: str
    def __init__(self, node_id: _Optional[str] = ..., credential: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("node_id", "endpoints", "backend", "gpus", "version", "overcommit", "capabilities")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OVERCOMMIT_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    endpoints: _containers.RepeatedScalarFieldContainer[str]
    backend: str
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    version: str
    overcommit: float
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., endpoints: _Optional[_Iterable[str]] = ..., backend: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., version: _Optional[str] = ..., overcommit: _Optional[float] = ..., capabilities: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("node_id", "heartbeat_interval_s", "heartbeat_timeout_s")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    def __init__(self, node_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., heartbeat_timeout_s: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "gpus", "sessions", "draining")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    draining: bool
    def __init__(self, node_id: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ..., draining: _Optional[bool] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("known", "end_leases")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    END_LEASES_FIELD_NUMBER: _ClassVar[int]
    known: bool
    end_leases: _containers.RepeatedCompositeFieldContainer[EndLease]
    def __init__(self, known: _Optional[bool] = ..., end_leases: _Optional[_Iterable[_Union[EndLease, _Mapping]]] = ...) -> None: ...

class CommandsRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class EndLease(_message.Message):
    __slots__ = ("lease_id", "reason")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    reason: str
    def __init__(self, lease_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Undrain(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PageOut(_message.Message):
    __slots__ = ("session_id", "to")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    to: str
    def __init__(self, session_id: _Optional[str] = ..., to: _Optional[str] = ...) -> None: ...

class PageIn(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class Park(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("command_id", "end_lease", "drain", "page_out", "page_in", "undrain", "park")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    END_LEASE_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    PAGE_OUT_FIELD_NUMBER: _ClassVar[int]
    PAGE_IN_FIELD_NUMBER: _ClassVar[int]
    UNDRAIN_FIELD_NUMBER: _ClassVar[int]
    PARK_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    end_lease: EndLease
    drain: Drain
    page_out: PageOut
    page_in: PageIn
    undrain: Undrain
    park: Park
    def __init__(self, command_id: _Optional[str] = ..., end_lease: _Optional[_Union[EndLease, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., page_out: _Optional[_Union[PageOut, _Mapping]] = ..., page_in: _Optional[_Union[PageIn, _Mapping]] = ..., undrain: _Optional[_Union[Undrain, _Mapping]] = ..., park: _Optional[_Union[Park, _Mapping]] = ...) -> None: ...

class ValidateTokenRequest(_message.Message):
    __slots__ = ("node_id", "token_sha256")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SHA256_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    token_sha256: bytes
    def __init__(self, node_id: _Optional[str] = ..., token_sha256: _Optional[bytes] = ...) -> None: ...

class ValidateTokenReply(_message.Message):
    __slots__ = ("valid", "reason", "lease_id", "vram_quota_bytes", "expires_at", "max_sessions", "qos", "idle_timeout_s", "gpus", "vram_per_gpu_bytes")
    VALID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    VRAM_QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    VRAM_PER_GPU_BYTES_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    reason: str
    lease_id: str
    vram_quota_bytes: int
    expires_at: float
    max_sessions: int
    qos: str
    idle_timeout_s: float
    gpus: _containers.RepeatedScalarFieldContainer[int]
    vram_per_gpu_bytes: int
    def __init__(self, valid: _Optional[bool] = ..., reason: _Optional[str] = ..., lease_id: _Optional[str] = ..., vram_quota_bytes: _Optional[int] = ..., expires_at: _Optional[float] = ..., max_sessions: _Optional[int] = ..., qos: _Optional[str] = ..., idle_timeout_s: _Optional[float] = ..., gpus: _Optional[_Iterable[int]] = ..., vram_per_gpu_bytes: _Optional[int] = ...) -> None: ...
