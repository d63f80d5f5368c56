"""Turn the project's typed errors into one-line messages and exit codes at the CLI edge."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

EXIT_USER_ERROR = 2


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    import aiomqtt

    from broker.runner import BrokerError
    from camera_node.link import ResyncFailed, VerifierRejected, VerifierTimeout
    from edgespec.config import ModelNotFound
    from edgespec.mqtt import BrokerUrlError
    from schemas import WireError
    from speculative.models import ModelLoadError

    known = (BrokerError, ResyncFailed, VerifierRejected, VerifierTimeout, ModelNotFound, BrokerUrlError,
             WireError, ModelLoadError, aiomqtt.MqttError, ValueError)
    try:
        yield
    except known as exc:
        print(f"edgespec: error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: 130 or 143, no traceback
        from edgespec.lifecycle import exit_code, interrupted

        interrupted()
        raise SystemExit(exit_code()) from None
