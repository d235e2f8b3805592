"""Type stub for the compiled stream framer (ext/framer.pyx), re-exported by s2sfast.framing."""

DEFAULT_HEADER_LIMIT: int
MAX_NS_BINDINGS: int
STREAM_NS: str

class StreamOpen:
    """The stream header. ``attrs`` excludes namespace declarations (see ``namespaces``)."""

    @property
    def name(self) -> str: ...
    @property
    def attrs(self) -> dict[str, str]: ...
    @property
    def namespaces(self) -> dict[str, str]: ...
    def __init__(
        self,
        *,
        name: str = "stream",
        attrs: dict[str, str] | None = None,
        namespaces: dict[str, str] | None = None,
    ) -> None: ...

class Stanza:
    """One complete top-level element; ``raw`` is its exact bytes as received."""

    @property
    def raw(self) -> bytes: ...
    @property
    def name(self) -> str: ...
    @property
    def ns(self) -> str: ...
    @property
    def to(self) -> str | None: ...
    @property
    def from_(self) -> str | None: ...
    @property
    def type(self) -> str | None: ...
    @property
    def id(self) -> str | None: ...
    @property
    def namespaces(self) -> dict[str, str] | None: ...
    @property
    def declares_ns(self) -> bool: ...
    @property
    def to_domain(self) -> str: ...
    @property
    def from_domain(self) -> str: ...
    def __init__(
        self,
        *,
        raw: bytes,
        name: str,
        ns: str,
        to: str | None = None,
        from_: str | None = None,
        type: str | None = None,
        id: str | None = None,
        namespaces: dict[str, str] | None = None,
        declares_ns: bool = False,
    ) -> None: ...

class StreamClose:
    """``</stream:stream>`` was received."""

_Event = StreamOpen | Stanza | StreamClose

class StreamFramer:
    """Incremental restricted-XML stream framer (see ext/framer.pyx for the rules).

    ``max_depth`` counts nesting inside the stream: a top-level stanza is at depth 1.
    """

    def __init__(
        self,
        max_stanza_size: int | None = None,
        max_depth: int = 64,
        default_ns: str = "jabber:server",
    ) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[_Event]: ...
    @property
    def max_stanza_size(self) -> int | None: ...
    @max_stanza_size.setter
    def max_stanza_size(self, value: int | None) -> None: ...
    @property
    def offset(self) -> int: ...
    @property
    def buffer_capacity(self) -> int: ...
    @property
    def scratch_capacity(self) -> int: ...
    @property
    def closed(self) -> bool: ...
