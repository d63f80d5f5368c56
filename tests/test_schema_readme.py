"""schemas/README.md's table of session messages names each message's fields exactly as
schemas/messages.py declares them, in wire order."""

from __future__ import annotations

import re
from pathlib import Path

from schemas.fields import wire_fields
from schemas.messages import MESSAGES, MsgType

README = Path(__file__).resolve().parent.parent / "schemas" / "README.md"


def readme_fields() -> dict[int, tuple[str, list[str]]]:
    """type -> (name, field names) from the README's session-message table."""
    section = README.read_text(encoding="utf-8").split("## Session messages", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \| (.*) \|$", section, flags=re.MULTILINE)
    return {int(t): (name, re.findall(r"`([a-z_][a-z0-9_]*)`", cell)) for t, name, cell in rows}


def test_readme_table_matches_the_declarations() -> None:
    table = readme_fields()
    assert sorted(table) == sorted(int(t) for t in MsgType)
    for mtype, cls in MESSAGES.items():
        name, fields = table[int(mtype)]
        assert name == mtype.name
        assert fields == [field for field, _ in wire_fields(cls)], f"README row {int(mtype)} {name}"


def test_acl_template_writes_no_topic_of_its_own() -> None:
    """Every edgespec topic in the broker ACL is a named topic of schemas.topics.LAYOUT."""
    template = README.parent.parent / "broker" / "acl.template"
    rules = [line for line in template.read_text(encoding="utf-8").splitlines()
             if line.startswith(("pattern ", "topic "))]
    assert rules and not [line for line in rules if "/" in line and not line.split()[-1].startswith("@HA@/")]
