"""The bytes on the wire, pinned: every message type encodes to exactly these bytes, decodes
back to the same message, and every malformed variant of them decodes to the same outcome
(the same typed error and detail, or the same message) as recorded in
`tests/data/wire_outcomes.json.gz`.

Regenerate the outcomes only for an intended contract change:
`cd tests && ../.venv/bin/python -c "import wire_samples as w; w.write_outcomes()"`.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from wire_samples import SAMPLES, malformed_cases, outcome

from schemas.messages import decode, encode

OUTCOMES = Path(__file__).parent / "data" / "wire_outcomes.json.gz"

PINNED = {
    "open_minimal": "dc00120101c410000102030405060708090a0b0c0d0e0f93010203c0cb000000000000000000cb3ff00000000000000004104090c4100000000000000000000000000000000090c0c0c0",
    "open_full": "dc00120101c410000102030405060708090a0b0c0d0e0f9301020393a7666c6f61743136920203c40c0000003c0040004200440045cb3fe666666666666628cb3feccccccccccccdcf8000000000000005060264920002c4106465666768696a6b6c6d6e6f707172739204059208099302c41005000000090000000700000000000000c4080300010002000000cf0000018bcfe5687b",
    "open_greedy_block": "dc00120101c410000102030405060708090a0b0c0d0e0f910ac0cb000000000000000000cb3ff00000000000000004104090c4106465666768696a6b6c6d6e6f707172739093030405c0cf0000018bcfe56800",
    "opened": "950102c410000102030405060708090a0b0c0d0e0faa76657269666965722d310c",
    "opened_verdict": "960102c410000102030405060708090a0b0c0d0e0faa76657269666965722d310c9592c3c3024d0fc3",
    "draft": "970103c410000102030405060708090a0b0c0d0e0fcf00000100000000001e920b0c9302c41005000000090000000700000000000000c4080300010002000000",
    "draft_greedy": "970103c410000102030405060708090a0b0c0d0e0f000190c0",
    "verdict": "990104c410000102030405060708090a0b0c0d0e0f0792c3c2012a13c2",
    "verdict_done": "990104c410000102030405060708090a0b0c0d0e0f089000ce7fffffffcd1770c3",
    "verdict_timed": "9b0104c410000102030405060708090a0b0c0d0e0f0991c3010528c2cc8ccdb0c2",
    "resync": "940105c410000102030405060708090a0b0c0d0e0faf756e6b6e6f776e2073657373696f6e",
    "close": "940106c410000102030405060708090a0b0c0d0e0fa4646f6e65",
    "close_reason": "940106c410000102030405060708090a0b0c0d0e0fac63616e63656c6c656420c3bc",
    "error": "960107c410000102030405060708090a0b0c0d0e0f0309b36261645f73657175656e63653a207374616c65",
    "error_nil": "960107c0c00ea462757379",
    "sealed_open": "960108c410000102030405060708090a0b0c0d0e0fa7766b2d32303234c420000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fc42801010101010101010101010101010101010101010101010101010101010101010101010101010101",
    "sealed": "950109c410000102030405060708090a0b0c0d0e0f05c40a63697068657274657874",
}


def test_every_message_type_is_pinned() -> None:
    assert set(PINNED) == set(SAMPLES)
    assert len({int(m.type) for m in SAMPLES.values()}) == 9


@pytest.mark.parametrize("name", sorted(PINNED))
def test_encoded_bytes_are_pinned(name: str) -> None:
    payload = encode(SAMPLES[name])
    assert payload.hex() == PINNED[name]
    assert decode(payload) == SAMPLES[name]


def test_malformed_variants_keep_their_outcomes() -> None:
    with gzip.open(OUTCOMES, "rt") as handle:
        expected = json.load(handle)
    actual = {name: outcome(payload) for name, payload in malformed_cases()}
    assert actual.keys() == expected.keys()
    changed = {name: (expected[name], actual[name]) for name in expected if actual[name] != expected[name]}
    assert not changed, f"{len(changed)} outcomes changed, e.g. {list(changed.items())[:5]}"
