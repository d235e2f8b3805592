"""s2sfast: a fast, strict XMPP server-to-server federation engine.

The public face: :func:`load_config` reads a MongooseIM ``mongooseim.toml``; :class:`Node`
runs a federation node from it (asyncio).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from s2sfast.config import load_config

__version__ = "0.1.0"

__all__ = ["__version__", "Node", "load_config"]

if TYPE_CHECKING:
    from s2sfast.node import Node


def __getattr__(name: str) -> Any:
    # Node needs the compiled framer; import it on first use so that `import s2sfast` (and
    # the config tools) work in a checkout where the extension is not built yet.
    if name == "Node":
        from s2sfast.node import Node

        return Node
    raise AttributeError(f"module 's2sfast' has no attribute {name!r}")
