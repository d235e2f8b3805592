"""Certificate files shared by the TLS tests of this directory."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from certs import make_ca, self_signed, utcnow


@pytest.fixture(scope="module")
def pki(tmp_path_factory: Any) -> dict[str, str]:
    """A CA with an intermediate, cert files for a.test (issued by the intermediate: a chain
    of two) and b.test, and bad variants; tls_pair's context helpers take their keys."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    inter = ca.intermediate()
    now = utcnow()
    return {
        "cafile": ca.write_pem(d),
        "a": inter.issue(["a.test"]).write_pem(d, "a.pem"),
        "b": ca.issue(["b.test"]).write_pem(d, "b.pem"),
        "b_rsa": ca.issue(["b.test"], key_type="rsa").write_pem(d, "b_rsa.pem"),
        "b_expired": ca.issue(
            ["b.test"], not_before=now - timedelta(days=9), not_after=now - timedelta(days=1)
        ).write_pem(d, "b_expired.pem"),
        "b_wrong": ca.issue(["c.test"]).write_pem(d, "b_wrong.pem"),
        "b_wild": ca.issue(["*.b.test"]).write_pem(d, "b_wild.pem"),
        "b_srv": ca.issue([], srv_ids=["b.test"], cn="srv only").write_pem(d, "b_srv.pem"),
        "b_xmpp": ca.issue([], xmpp_addrs=["b.test"], cn="addr only").write_pem(d, "b_xmpp.pem"),
        "b_self": self_signed("b.test").write_pem(d, "b_self.pem"),
        "a_self": self_signed("a.test").write_pem(d, "a_self.pem"),
    }
