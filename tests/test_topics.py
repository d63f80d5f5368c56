"""Topic layout: ids as whole levels, unsafe ids refused, uplinks parsed strictly."""

from __future__ import annotations

import pytest

from schemas import ErrorCode, Topics, WireError

T = Topics()


def test_layout():
    assert T.open("cam-1") == "edgespec/v1/dev/cam-1/up/open"
    assert T.session_up("cam-1", "v1") == "edgespec/v1/dev/cam-1/up/v/v1"
    assert T.down("cam-1") == "edgespec/v1/dev/cam-1/down"
    assert T.result("cam-1") == "edgespec/v1/dev/cam-1/result"
    assert T.device_status("cam-1") == "edgespec/v1/dev/cam-1/status"
    assert T.verifier_status("v1") == "edgespec/v1/verifier/v1/status"
    assert T.open_subscription() == "$share/verifiers/edgespec/v1/dev/+/up/open"
    assert T.open_subscription(None) == "edgespec/v1/dev/+/up/open"
    assert T.session_subscription("v1") == "edgespec/v1/dev/+/up/v/v1"


def test_custom_prefix():
    assert Topics("site-a/cams").down("x") == "site-a/cams/dev/x/down"
    for bad in ("", "a/#", "a/+/b", "/lead", "trail/", "$SYS"):
        with pytest.raises(ValueError):
            Topics(bad)


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "cam 1", "ünï", "-lead", "x" * 65, "a\0b"])
def test_unsafe_ids_refused(bad):
    with pytest.raises(WireError) as info:
        T.down(bad)
    assert info.value.code == ErrorCode.BAD_TOPIC


def test_parse_uplink():
    up = T.parse_uplink("edgespec/v1/dev/cam-1/up/open")
    assert (up.device_id, up.kind, up.verifier_id) == ("cam-1", "open", None)
    up = T.parse_uplink("edgespec/v1/dev/cam-1/up/v/ver-2")
    assert (up.device_id, up.kind, up.verifier_id) == ("cam-1", "session", "ver-2")
    for bad in ("edgespec/v1/dev/cam-1/down", "other/dev/x/up/open", "edgespec/v1/dev/cam-1/up/open/x",
                "edgespec/v1/dev//up/open", "edgespec/v1/dev/cam-1/up/v/"):
        with pytest.raises(WireError):
            T.parse_uplink(bad)
