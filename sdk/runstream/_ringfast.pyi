# Stub of the C extension sdk/runstream/_ringfast.c.

CRC32C_IMPL: str  # "sse4.2", "armv8-crc" or "table"

def crc32c(data: bytes | bytearray | memoryview, value: int = 0, /) -> int: ...
def crc32c_table(data: bytes | bytearray | memoryview, value: int = 0, /) -> int: ...

class WriterCore:
    _data: memoryview
    _words: memoryview
    _head: int
    _tail: int
    _seq: int
    _cap: int
    _max: int
    _overflow_bytes: int
    def push(self, kind: int, step: int, t: float, body: bytes) -> None: ...
    def push_parts(self, kind: int, step: int, t: float, parts: list[object]) -> None: ...

class RunCore:
    _writer: WriterCore
    _step: int
    _pending: dict[str, object] | None
    _last_body: bytes | None
    _media_next_id: int
    _media_inline_max: int
    def log(self, data: dict[str, object], step: int | None = None, commit: bool | None = None) -> None: ...

def pack_row(row: dict[object, object], /) -> bytes | None: ...
def snapshot_image(array: object, /) -> tuple[bytes, tuple[int, ...], int] | None: ...
