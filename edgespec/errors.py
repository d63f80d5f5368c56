"""Turn the project's typed errors into one-line messages and exit codes at the CLI edge."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

EXIT_USER_ERROR = 2


# The typed errors a command may end with, by module: a module that was never imported cannot
# have raised its error, so none is imported here (speculative.models alone imports torch,
# seconds that `edgespec revoke` must not spend).
KNOWN_ERRORS = (
    ("aiomqtt", "MqttError"),
    ("broker.runner", "BrokerError"),
    ("camera_node.link", "ResyncFailed"), ("camera_node.link", "VerifierRejected"),
    ("camera_node.link", "VerifierTimeout"), ("camera_node.errors", "BrokerUnreachable"),
    ("edgespec.config", "ModelNotFound"),
    ("edgespec.models_fetch", "ModelFetchError"), ("edgespec.model_registry", "ModelNotFetched"),
    ("transport.urls", "BrokerUrlError"),
    ("schemas", "WireError"),
    ("speculative.models", "ModelLoadError"),
)


def known_errors() -> tuple[type[BaseException], ...]:
    """The typed errors of KNOWN_ERRORS whose modules are loaded, and ValueError."""
    found: list[type[BaseException]] = [ValueError]
    for module, name in KNOWN_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, known_errors()):
            raise
        print(f"edgespec: error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: 130 or 143, no traceback
        from transport.lifecycle import exit_code, interrupted

        interrupted()
        raise SystemExit(exit_code()) from None
