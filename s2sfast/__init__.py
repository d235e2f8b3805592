"""s2sfast: a fast, strict XMPP server-to-server federation engine.

The public face: :func:`load_config` reads a MongooseIM ``mongooseim.toml``; :class:`Node`
runs a federation node from it (asyncio).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
