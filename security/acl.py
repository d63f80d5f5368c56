"""The broker's ACL file, rendered from `broker/acl.template` for an `AclPolicy`.

Every edgespec topic in it comes from the layout in `schemas/topics.py`: the template names
topics (`@down(%u)@`, `@session_up(%u,@USER@)@`) and the renderer writes them under the
policy's prefix, so the ACL and the clients cannot disagree on a topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from schemas.topics import DEFAULT_PREFIX, LAYOUT, Topics
from security.atomic import MosquittoFileError, atomic_write_text, locked
from security.ids import validate_topic_prefix, validate_username

ACL_TEMPLATE = Path(__file__).resolve().parent.parent / "broker" / "acl.template"
DEFAULT_HA_PREFIX = "homeassistant"  # Home Assistant's MQTT discovery prefix


@dataclass(frozen=True)
class AclPolicy:
    """Who may do what: devices by ACL pattern (any username), services listed by name."""

    prefix: str = DEFAULT_PREFIX
    verifiers: tuple[str, ...] = ()
    dashboards: tuple[str, ...] = ()
    verifier_writes_results: bool = False
    ha_prefix: str = DEFAULT_HA_PREFIX  # devices write <ha_prefix>/device/<own id>/config
    home_assistants: tuple[str, ...] = ()  # Home Assistant accounts (birth message, reads cameras)

    def __post_init__(self) -> None:
        validate_topic_prefix(self.prefix)
        validate_topic_prefix(self.ha_prefix)
        object.__setattr__(self, "verifiers", tuple(self.verifiers))
        object.__setattr__(self, "dashboards", tuple(self.dashboards))
        object.__setattr__(self, "home_assistants", tuple(self.home_assistants))
        seen: dict[str, str] = {}
        for role, names in (("verifier", self.verifiers), ("dashboard", self.dashboards),
                            ("homeassistant", self.home_assistants)):
            for name in names:
                validate_username(name, role=role)
                if name in seen:
                    raise MosquittoFileError(
                        f"username {name!r} is listed as {seen[name]} and as {role}: every "
                        "username (device ids included) must belong to one role")
                seen[name] = role

    @property
    def service_users(self) -> frozenset[str]:
        """Usernames that are not devices; provisioning must refuse these as device ids."""
        return frozenset(self.verifiers) | frozenset(self.dashboards) | frozenset(self.home_assistants)


_TOPIC = re.compile(r"@(\w+)\(([^()@]*)\)@")  # @name(owner[,verifier])@: a topic of schemas.topics.LAYOUT
_BLOCK = re.compile(r"(?ms)^@BEGIN (\w+)\n(.*?)^@END \1\n")
_IF = re.compile(r"(?ms)^@IF (\w+)\n(.*?)^@ENDIF \1\n")


def _topic(topics: Topics, match: re.Match[str]) -> str:
    """The pattern `@name(owner[,verifier])@` stands for, e.g. `@down(%u)@` -> `<prefix>/dev/%u/down`."""
    name, args = match.group(1), match.group(2).split(",")
    if name not in LAYOUT or not 1 <= len(args) <= 2:
        raise MosquittoFileError(f"ACL template: unknown topic {match.group(0)!r} (names: {sorted(LAYOUT)})")
    return topics.pattern(name, *args)


def render_acl(policy: AclPolicy, template: str | None = None) -> str:
    """ACL file text for `policy` from `broker/acl.template` (or `template`)."""
    text = ACL_TEMPLATE.read_text(encoding="utf-8") if template is None else template
    flags = {"results": policy.verifier_writes_results}
    users = {"verifier": policy.verifiers, "dashboard": policy.dashboards,
             "homeassistant": policy.home_assistants, "verifier_uplink": policy.verifiers}

    def keep_if(match: re.Match[str]) -> str:
        if match.group(1) not in flags:
            raise MosquittoFileError(f"ACL template: unknown condition {match.group(1)!r}")
        return match.group(2) if flags[match.group(1)] else ""

    def expand(match: re.Match[str]) -> str:
        role, body = match.group(1), match.group(2)
        if role not in users:
            raise MosquittoFileError(f"ACL template: unknown role block {role!r}")
        return "\n".join(body.replace("@USER@", name) for name in users[role])

    text = _IF.sub(keep_if, text)
    text = _BLOCK.sub(expand, text)
    topics = Topics(policy.prefix)
    text = "".join(line if line.startswith("#") else
                   _TOPIC.sub(lambda m: _topic(topics, m), line.replace("@HA@", policy.ha_prefix))
                   for line in text.splitlines(keepends=True))
    leftover = [line for line in text.splitlines() if line.startswith("@") or
                ("@" in line and not line.startswith("#"))]
    if leftover:
        raise MosquittoFileError(f"ACL template left unexpanded lines: {leftover!r}")
    return text


def write_acl_file(path: str | Path, policy: AclPolicy, template: str | None = None) -> Path:
    """Render and atomically write the ACL file. Send SIGHUP to the broker afterwards."""
    path = Path(path)
    with locked(path):
        return atomic_write_text(path, render_acl(policy, template))
