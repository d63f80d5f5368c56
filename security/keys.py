"""X25519 key pairs, session key agreement and verifier key rotation, importable from one place.

The names live in `security.key_pairs` (key pairs, key ids, conversions), `security.key_files`
(key storage), `security.session_keys` (the session key agreement, described there) and
`security.key_ring` (`VerifierKeyRing`).
"""

from __future__ import annotations

from .key_files import (load_private_key, load_public_key, parse_public_key, save_private_key, save_public_key,
                        write_secret_file)
from .key_pairs import (KEY_ID_LEN, KEY_LEN, KeyAgreementError, KeyFormatError, KeyPair, PublicKeyLike,
                        UnknownKeyId, generate_keypair, key_id, private_key_from_bytes, public_key_from_b64,
                        public_key_from_bytes, public_key_to_b64)
from .key_ring import DEFAULT_MAX_PREVIOUS, VerifierKeyRing
from .session_keys import (DOWNLINK_LABEL, SESSION_ID_LEN, SESSION_ID_MAX_LEN, SESSION_ID_MIN_LEN,
                           STATIC_SECRETS_KEPT, UPLINK_LABEL, SessionKeys, device_session_keys, new_session_id,
                           verifier_session_keys)

__all__ = [
    "KEY_ID_LEN", "KEY_LEN", "KeyAgreementError", "KeyFormatError", "KeyPair", "PublicKeyLike", "UnknownKeyId",
    "generate_keypair", "key_id", "private_key_from_bytes", "public_key_from_b64", "public_key_from_bytes",
    "public_key_to_b64",
    "load_private_key", "load_public_key", "parse_public_key", "save_private_key", "save_public_key",
    "write_secret_file",
    "DOWNLINK_LABEL", "SESSION_ID_LEN", "SESSION_ID_MAX_LEN", "SESSION_ID_MIN_LEN", "STATIC_SECRETS_KEPT",
    "UPLINK_LABEL", "SessionKeys", "device_session_keys", "new_session_id", "verifier_session_keys",
    "DEFAULT_MAX_PREVIOUS", "VerifierKeyRing",
]
