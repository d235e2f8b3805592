"""The Python face of the compiled stream framer (ext/framer.pyx).

There is deliberately no pure-Python fallback: a federation node without the compiled framer
would be an order of magnitude slower and would not enforce the same limits. If the extension
is missing, importing this module fails and says how to build it.
"""

from __future__ import annotations

from s2sfast.protocol.errors import FramingError

try:
    from s2sfast._framer import Stanza, StreamClose, StreamFramer, StreamOpen
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "s2sfast's compiled stream framer (module s2sfast._framer, built from ext/framer.pyx) "
        "is not available. Build it: `pip install .` from a checkout (or `pip install -e .` "
        "for development, or `python setup.py build_ext --inplace`). "
        f"Underlying error: {exc}"
    ) from exc

__all__ = ["StreamFramer", "StreamOpen", "Stanza", "StreamClose", "FramingError"]
