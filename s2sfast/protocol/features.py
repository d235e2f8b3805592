"""``<stream:features/>`` on S2S streams (sans-IO): what the incoming machine announces and
what the outgoing machine reads from the peer's.

Only the parts S2S uses: STARTTLS (RFC 6120 5), SASL EXTERNAL (XEP-0178), dialback with error
support (XEP-0220 / RFC 7590's ``urn:xmpp:features:dialback``), XEP-0198's ``<sm/>``, XEP-0288's
``<bidi/>`` and XEP-0478's ``<limits/>``. Which of them a stream offers is the machine's
decision; this module only writes and reads the element.
"""

from __future__ import annotations

from lxml import etree

from s2sfast.protocol.bidi import FEATURE as BIDI_FEATURE
from s2sfast.protocol.bidi import offered as bidi_offered
from s2sfast.protocol.dialback import DIALBACK_FEATURE_NS
from s2sfast.protocol.errors import STREAM_NS, RemoteStreamError
from s2sfast.protocol.negotiation import TLS_NS
from s2sfast.protocol.sasl import EXTERNAL, mechanisms_feature, parse_mechanisms
from s2sfast.protocol.sm import FEATURE as SM_FEATURE
from s2sfast.protocol.sm import SM_NS
from s2sfast.protocol.stream_limits import StreamLimits, find_limits, limits_bytes

__all__ = ["TLS_REQUIRED_MODES", "Features", "features_bytes", "parse_features"]

#: ``use_starttls`` modes under which a stream may carry nothing but TLS negotiation before TLS
TLS_REQUIRED_MODES = frozenset({"required", "required_trusted"})

_DIALBACK_FEATURE = f"<dialback xmlns='{DIALBACK_FEATURE_NS}'><errors/></dialback>"


class Features:
    """What a ``<stream:features/>`` offered (only the parts S2S cares about)."""

    __slots__ = ("starttls", "starttls_required", "dialback", "sm", "external", "bidi", "limits")

    def __init__(
        self,
        *,
        starttls: bool,
        starttls_required: bool,
        dialback: bool,
        sm: bool = False,
        external: bool = False,
        bidi: bool = False,
        limits: StreamLimits | None = None,
    ) -> None:
        self.starttls = starttls
        self.starttls_required = starttls_required
        self.dialback = dialback
        #: SASL EXTERNAL among the ``<mechanisms/>`` (XEP-0178)
        self.external = external
        #: XEP-0198 ``<sm xmlns='urn:xmpp:sm:3'/>``
        self.sm = sm
        #: XEP-0288 ``<bidi xmlns='urn:xmpp:features:bidi'/>``
        self.bidi = bidi
        #: XEP-0478: what the peer accepts on this stream (None: not announced)
        self.limits = limits


def features_bytes(
    *,
    starttls: bool,
    starttls_required: bool,
    external: bool,
    bidi: bool,
    limits: StreamLimits | None,
    dialback: bool,
    sm: bool,
) -> bytes:
    """Our ``<stream:features/>``, children in a fixed order.

    Args:
        starttls: offer STARTTLS; starttls_required: with ``<required/>``.
        external: offer SASL EXTERNAL (``<mechanisms/>`` with EXTERNAL only).
        bidi: offer XEP-0288.
        limits: announce XEP-0478 limits (None or empty: no ``<limits/>``).
        dialback: offer dialback (with ``<errors/>``); sm: offer XEP-0198.

    Returns:
        The element's bytes.
    """
    parts = ["<stream:features>"]
    if starttls:
        if starttls_required:
            parts.append(f"<starttls xmlns='{TLS_NS}'><required/></starttls>")
        else:
            parts.append(f"<starttls xmlns='{TLS_NS}'/>")
    if external:
        parts.append(mechanisms_feature())
    if bidi:
        parts.append(BIDI_FEATURE.decode())
    if limits is not None:
        parts.append(limits_bytes(limits).decode())
    if dialback:
        parts.append(_DIALBACK_FEATURE)
    if sm:
        parts.append(SM_FEATURE.decode())
    parts.append("</stream:features>")
    return "".join(parts).encode()


def parse_features(raw: bytes) -> Features:
    """Parse ``<stream:features>`` (control plane, lxml). Children may come in any order.

    Raises:
        RemoteStreamError: ``bad-format`` when it is not well-formed.
    """
    wrapped = b"<w xmlns:stream='" + STREAM_NS.encode() + b"'>" + raw + b"</w>"
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        root = etree.fromstring(wrapped, parser)
    except etree.XMLSyntaxError as exc:
        raise RemoteStreamError("bad-format", f"malformed stream features: {exc}") from exc
    features = root[0] if len(root) else root
    starttls = features.find(f"{{{TLS_NS}}}starttls")
    return Features(
        starttls=starttls is not None,
        starttls_required=starttls is not None
        and starttls.find(f"{{{TLS_NS}}}required") is not None,
        dialback=features.find("{urn:xmpp:features:dialback}dialback") is not None,
        sm=features.find(f"{{{SM_NS}}}sm") is not None,
        external=EXTERNAL in parse_mechanisms(features),
        bidi=bidi_offered(features),
        limits=find_limits(features),
    )
