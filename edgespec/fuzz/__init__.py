"""`edgespec fuzz`: hostile input on a verifier's uplink topics while well-behaved devices generate.

Attackers are ordinary MQTT clients with device ids of their own: provisioned development
identities (they can seal messages, so the verifier's checks behind decryption are reached)
and one stranger that no registry knows. Together they send `--count` hostile payloads: random
bytes, truncated and bit-flipped msgpack, wrong versions and types, every field of every uplink
message replaced by a wrong type or an out-of-range value, oversize arrays, strings and
payloads, token ids outside the vocabulary, features of the wrong dtype, shape or size and with
NaN, sealed messages with bad tags, flipped bits, wrong keys, wrong sequence numbers and wrong
topics (associated data), replays (of their own traffic and of well-behaved devices' traffic
captured by a recorder), session ids of other devices, drafts for unknown sessions, plaintext
for encrypted sessions and unsafe topics.

Every payload carries the outcome the wire contract (schemas/README.md) prescribes for it; the
payloads whose outcome only the decoder can tell (random bytes, mutations) get it from
`schemas.decode` itself. Replies come back on each attacker's own downlink, one per payload
and in order (Mosquitto keeps one publisher's order; the verifier handles messages one at a
time), so every reply is matched with the payload that caused it.

Checks (the report's last lines and the JSON's `checks`):

  alive            the verifier process never exited and still answers after the attack
  rss_bounded      its VmRSS grew by at most --rss-growth-mb from before the attack to the
                   largest sample during and after it
  counted          its `rejected` counters grew by exactly the rejections the attack caused,
                   reason by reason, and none was `internal`
  errors_readable  every payload from a valid device id was answered, with an ERROR the sender
                   could decode where it was rejected, and every outcome is the contract's
  exact            every well-behaved session finished with exactly the target-alone greedy
                   output (HF `generate`), none failed and none started after the attack failed

Threat models (`--broker-mode`, for the broker this command starts itself):

  acl   Mosquitto with password authentication and the production ACL (security/
        mosquitto_files.render_acl): each client may publish only on its own uplink topics,
        so the broker itself drops unsafe topics and another device's topics. The recorder
        is a wiretap with the verifier's read rights.
  open  the development broker (anonymous, no ACL); the recorder subscribes to `#`. With
        `--spoof` attackers also publish on the well-behaved devices' own topics, which only
        a broker without ACL allows.

`--broker URL --verifier-id ID` fuzzes a verifier already running on a development broker;
give `--verifier-pid` to watch its memory and `--home` for its fleet registry.

The package's modules:

  contract   outcomes, `Attack`, what attackers know (`FuzzContext`) and `predict`
  templates  valid message templates the generators mutate
  attacks_plain, attacks_sealed, attacks_foreign
             stateless attack generators: plaintext wire format, sealed OPENs, others' traffic
  attacks    the table of stateless kinds with their weights (`STATELESS`)
  tally      `Budget`, `Tally` and `Attacker` (each reply matched with its payload)
  transport  `MqttTransport` and the in-process `LocalBus`
  sessions   `SessionAttacker`: hostile messages inside sessions of its own
  campaign   `FuzzConfig`, all attackers at once (`attack`) and `run_local`
  system     the well-behaved devices, memory and stats watches, the self-started system
  run        `run_mqtt`
  report     the checks, the JSON report and the printed summary
  cli        `register`, `cmd_fuzz` and `main` (`edgespec fuzz`, `python -m edgespec.fuzz`)
"""

from __future__ import annotations

from .contract import (
    RESYNC, OPENED, VERDICT, NO_REPLY, DROPPED, SPOOFED, NON_REJECTIONS, KNOWN_BUG_KINDS, reason,
    Attack, Captured, FuzzContext, Identity, peek_session_id, predict,
)
from .templates import pack, fields_of, valid_open, templates, UPLINK_TYPES, WRONG_TYPES, OUT_OF_RANGE
from .attacks_plain import (
    gen_random_bytes, gen_truncated, gen_bitflip_plain, gen_bad_version, gen_bad_type,
    gen_field_type, gen_field_range, gen_oversize, gen_token_vocab, gen_features_plain,
    gen_features_overflow, gen_bad_topic,
)
from .attacks_sealed import gen_sealed_open_tamper, gen_sealed_open_semantic, gen_resume_overflow
from .attacks_foreign import gen_replay_captured, gen_foreign_session, gen_unknown_session, gen_spoof
from .attacks import Gen, STATELESS, STATEFUL_KINDS, CAPS
from .tally import Budget, Tally, Attacker
from .transport import Transport, MqttTransport, LocalBus
from .sessions import OwnSession, SessionAttacker
from .campaign import (
    CHUNK, send_by_topic, stateless_attacker, FuzzConfig, fuzz_context, identities, attack,
    run_local,
)
from .system import (
    REPO, DeviceRecord, device_loop, read_rss_kb, RssWatch, StatsFeed,
    SelfStarted,
)
from .run import run_mqtt
from .report import build_report, print_report
from .cli import cmd_fuzz, register, main

__all__ = [
    "RESYNC", "OPENED", "VERDICT", "NO_REPLY", "DROPPED", "SPOOFED", "NON_REJECTIONS",
    "KNOWN_BUG_KINDS", "reason", "Attack", "Captured", "FuzzContext", "Identity", "peek_session_id",
    "predict", "pack", "fields_of", "valid_open", "templates", "UPLINK_TYPES", "WRONG_TYPES",
    "OUT_OF_RANGE", "Gen", "gen_random_bytes", "gen_truncated", "gen_bitflip_plain",
    "gen_bad_version", "gen_bad_type", "gen_field_type", "gen_field_range", "gen_oversize",
    "gen_token_vocab", "gen_features_plain", "gen_features_overflow", "gen_bad_topic",
    "gen_sealed_open_tamper", "gen_sealed_open_semantic", "gen_resume_overflow",
    "gen_replay_captured", "gen_foreign_session", "gen_unknown_session", "gen_spoof", "STATELESS",
    "STATEFUL_KINDS", "CAPS", "Budget", "Tally", "Attacker", "Transport", "MqttTransport",
    "LocalBus", "OwnSession", "SessionAttacker", "CHUNK", "send_by_topic", "stateless_attacker",
    "FuzzConfig", "fuzz_context", "identities", "attack", "run_local", "REPO", "DeviceRecord",
    "device_loop", "read_rss_kb", "RssWatch", "StatsFeed", "SelfStarted",
    "run_mqtt", "build_report", "print_report", "cmd_fuzz", "register", "main",
]
