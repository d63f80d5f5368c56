"""Password file, ACL and production config generation (security/mosquitto_files.py).

The broker's behaviour with these files is tested in test_security_broker.py; this file checks
the formats, including against Mosquitto's own `mosquitto_passwd` where it is installed.
"""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from broker.runner import render_config
from security.ids import InvalidIdentifier, InvalidTopicPrefix
from security.mosquitto_files import (ACL_TEMPLATE, PROD_CONFIG, AclPolicy, BrokerFiles,
                                      MosquittoFileError, ensure_password_file, generate_password,
                                      hash_password, password_entry, read_password_file,
                                      remove_user, render_acl, render_prod_config, set_password,
                                      set_password_hash, verify_password, write_acl_file)

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def test_hash_format_matches_mosquitto_2() -> None:
    h = hash_password("secret")
    marker, kind, iterations, salt, digest = h.split("$")
    assert (marker, kind, iterations) == ("", "7", "101")
    assert len(base64.b64decode(salt)) == 12 and len(base64.b64decode(digest)) == 64
    assert verify_password(h, "secret") and not verify_password(h, "Secret")
    assert hash_password("x", iterations=1000).startswith("$7$1000$")
    fixed = hash_password("x", salt=b"\0" * 12)
    assert fixed == hash_password("x", salt=b"\0" * 12) != hash_password("x")


@pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="mosquitto_passwd not installed")
def test_hashes_interoperate_with_mosquitto_passwd(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.touch()
    subprocess.run([MOSQUITTO_PASSWD, "-b", str(theirs), "alice", "pa ss:wörd"], check=True)
    entries = read_password_file(theirs)
    assert entries["alice"].startswith("$7$101$")
    assert verify_password(entries["alice"], "pa ss:wörd")
    assert not verify_password(entries["alice"], "pa ss:word")
    # And mosquitto_passwd updates a file we wrote without disturbing our entries.
    ours = tmp_path / "ours"
    set_password(ours, "bob", "hunter2")
    subprocess.run([MOSQUITTO_PASSWD, "-b", str(ours), "carol", "x"], check=True)
    assert set(read_password_file(ours)) == {"bob", "carol"}
    assert verify_password(read_password_file(ours)["bob"], "hunter2")


def test_verify_rejects_malformed_hashes() -> None:
    for bad in ("", "$7$", "$7$abc$AAAA$BBBB", "$7$0$AAAAAAAAAAAAAAAA$AAAA", "$8$1$a$b",
                "$7$101$not base64!$x", "plain"):
        assert verify_password(bad, "x") is False


def test_password_file_set_update_remove(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    ensure_password_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_password_file(path) == {}
    set_password(path, "cam-1", "one")
    set_password(path, "cam-2", "two")
    set_password(path, "cam-1", "uno")  # update replaces, does not duplicate
    text = path.read_text()
    assert text.count("cam-1:") == 1 and text.startswith("# edgespec")
    entries = read_password_file(path)
    assert verify_password(entries["cam-1"], "uno") and verify_password(entries["cam-2"], "two")
    assert remove_user(path, "cam-1") is True
    assert remove_user(path, "cam-1") is False
    assert set(read_password_file(path)) == {"cam-2"}
    path.chmod(0o640)  # an operator's choice of mode survives updates
    set_password_hash(path, "cam-3", hash_password("three"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not list(tmp_path.glob(".passwd.*.tmp"))  # no temporary files left behind
    with pytest.raises(MosquittoFileError):
        set_password_hash(path, "cam-4", "plaintext")


@pytest.mark.parametrize("user", ["cam:1", "cam/1", "", "a b", "cam\n"])
def test_unsafe_usernames_are_refused(tmp_path: Path, user: str) -> None:
    with pytest.raises(MosquittoFileError):
        set_password(tmp_path / "passwd", user, "pw")


@pytest.mark.parametrize("password", ["", "nul\0inside"])
def test_unusable_passwords_are_refused(password: str) -> None:
    with pytest.raises(MosquittoFileError):
        password_entry("cam-1", password)


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    names = [f"cam-{i}" for i in range(16)]
    threads = [threading.Thread(target=set_password, args=(path, n, n)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = read_password_file(path)
    assert set(entries) == set(names)
    assert all(verify_password(entries[n], n) for n in names)


def test_generated_passwords_are_random_and_safe() -> None:
    a, b = generate_password(), generate_password()
    assert a != b and len(a) >= 32 and ":" not in a and "\n" not in a


# ------------------------------------------------------------------ ACL


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_acl_rules_per_role() -> None:
    text = render_acl(AclPolicy(prefix="edgespec/v1", verifiers=("ver-1", "ver-2"),
                                dashboards=("dash",)))
    lines = _lines(text)
    # A device's writable topics are a finite list (no wildcard): an uplink per verifier.
    assert lines[:12] == ["pattern write edgespec/v1/dev/%u/up/open",
                          "pattern write edgespec/v1/dev/%u/up/v/ver-1",
                          "pattern write edgespec/v1/dev/%u/up/v/ver-2",
                          "pattern write edgespec/v1/dev/%u/result",
                          "pattern write edgespec/v1/dev/%u/status",
                          "pattern read edgespec/v1/dev/%u/down",
                          "pattern read edgespec/v1/verifier/+/status",
                          "pattern write edgespec/v1/dev/%u/state",
                          "pattern write edgespec/v1/dev/%u/events",
                          "pattern write edgespec/v1/dev/%u/tracked_object_update",
                          "pattern write homeassistant/device/%u/config",
                          "pattern read homeassistant/status"]
    for vid in ("ver-1", "ver-2"):
        block = lines[lines.index(f"user {vid}"):][:11]
        assert block == [f"user {vid}",
                         f"topic deny edgespec/v1/dev/{vid}/#",  # never a device (checked first)
                         f"topic deny homeassistant/device/{vid}/#",
                         "topic read edgespec/v1/dev/+/up/#",
                         "topic read edgespec/v1/dev/+/status",
                         "topic read edgespec/v1/verifier/+/status",
                         "topic read edgespec/v1/verifier/+/stats",
                         "topic write edgespec/v1/dev/+/down",
                         "topic write edgespec/v1/dev/+/verified",
                         f"topic write edgespec/v1/verifier/{vid}/status",
                         f"topic write edgespec/v1/verifier/{vid}/stats"]
    assert lines[lines.index("user dash"):] == ["user dash",
                                                "topic deny edgespec/v1/dev/dash/#",
                                                "topic deny homeassistant/device/dash/#",
                                                "topic read edgespec/v1/dev/+/result",
                                                "topic read edgespec/v1/dev/+/verified",
                                                "topic read edgespec/v1/verifier/+/stats",
                                                "topic read edgespec/v1/dev/+/status",
                                                "topic read edgespec/v1/verifier/+/status",
                                                "topic read edgespec/v1/dev/+/state",
                                                "topic read edgespec/v1/dev/+/events",
                                                "topic read edgespec/v1/dev/+/tracked_object_update",
                                                "topic read homeassistant/device/+/config"]
    assert not any("@" in line for line in lines)
    assert "topic write edgespec/v1/dev/+/result" not in lines
    with_results = _lines(render_acl(AclPolicy(verifiers=("v",), verifier_writes_results=True)))
    assert "topic write edgespec/v1/dev/+/result" in with_results
    # A device writes its own discovery config only, under the policy's Home Assistant prefix.
    site = _lines(render_acl(AclPolicy(ha_prefix="site/ha", dashboards=("d",))))
    assert "pattern write site/ha/device/%u/config" in site and "pattern read site/ha/status" in site
    assert "topic read site/ha/device/+/config" in site and not any("homeassistant" in x for x in site)
    with_ha = _lines(render_acl(AclPolicy(home_assistants=("hass",))))
    assert with_ha[with_ha.index("user hass"):][:5] == ["user hass", "topic deny edgespec/v1/dev/hass/#",
                                                        "topic deny homeassistant/device/hass/#",
                                                        "topic write homeassistant/status",
                                                        "topic read homeassistant/status"]
    with pytest.raises(MosquittoFileError, match="one role"):
        AclPolicy(dashboards=("hass",), home_assistants=("hass",))


def test_acl_policy_validation(tmp_path: Path) -> None:
    with pytest.raises(MosquittoFileError, match="one role"):
        AclPolicy(verifiers=("svc",), dashboards=("svc",))
    with pytest.raises(InvalidIdentifier):
        AclPolicy(verifiers=("bad/name",))
    with pytest.raises(InvalidTopicPrefix):
        AclPolicy(prefix="edgespec/+")
    with pytest.raises(InvalidTopicPrefix):
        AclPolicy(ha_prefix="homeassistant/#")
    assert AclPolicy(verifiers=("v",), dashboards=("d",)).service_users == {"v", "d"}
    with pytest.raises(MosquittoFileError, match="unknown role"):
        render_acl(AclPolicy(), template="@BEGIN admin\nuser @USER@\n@END admin\n")
    path = write_acl_file(tmp_path / "acl", AclPolicy(prefix="site/es", verifiers=("v",)))
    assert "pattern read site/es/dev/%u/down" in path.read_text()


def test_acl_template_is_the_one_in_broker() -> None:
    assert ACL_TEMPLATE.parent.name == "broker" and "@BEGIN verifier" in ACL_TEMPLATE.read_text()


# ------------------------------------------------------------------ production config


def test_prod_config_rendering(tmp_path: Path) -> None:
    files = BrokerFiles.in_dir(tmp_path)
    text = render_prod_config(files, mqtts_port=18883, client_cert_port=18885, wss_port=18884,
                              tls_bind="127.0.0.1", user="edgespec")
    conf = dict(line.split(None, 1) for line in text.splitlines()
                if line and not line.startswith("#") and not line.startswith("listener"))
    assert conf["allow_anonymous"] == "false" and conf["per_listener_settings"] == "false"
    assert conf["password_file"] == str(files.password_file)
    assert conf["acl_file"] == str(files.acl_file)
    assert conf["persistence"] == "true"
    assert conf["persistence_location"] == f"{files.persistence_dir}/"
    assert conf["set_tcp_nodelay"] == "true" and int(conf["max_packet_size"]) <= 1 << 20
    assert conf["user"] == "edgespec"
    listeners = [line for line in text.splitlines() if line.startswith("listener")]
    assert listeners == ["listener 1883 127.0.0.1", "listener 18883 127.0.0.1",
                         "listener 18885 127.0.0.1", "listener 18884 127.0.0.1"]
    for key in ("cafile", "certfile", "keyfile"):
        values = {line.split(None, 1)[1] for line in text.splitlines() if line.startswith(key)}
        assert values == {str(getattr(files, key))}
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert not [line for line in settings if "/mosquitto/" in line]  # no container path left
    # broker/runner.py then moves the loopback listener to its port.
    assert render_config(text, port=23456).splitlines().count("listener 23456 127.0.0.1") == 1


def test_prod_config_template_keeps_container_defaults() -> None:
    text = PROD_CONFIG.read_text()
    assert "allow_anonymous false" in text and "password_file /mosquitto/config/passwd" in text
    assert "listener 8883" in text and "protocol websockets" in text
    assert "require_certificate true" in text and "use_identity_as_username true" in text
    with pytest.raises(MosquittoFileError, match="listener"):
        render_prod_config(BrokerFiles.in_dir("/tmp"), template="listener 1883\n")
