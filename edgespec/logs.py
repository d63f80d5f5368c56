"""Log set-up for the command line: plain text by default, one JSON object per line with
``--log-json`` (for log shippers: Loki, Elasticsearch, journald's JSON readers)."""

from __future__ import annotations

import json
import logging
import time

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JsonLogFormatter(logging.Formatter):
    """``{"time": ISO-8601 UTC, "level", "logger", "message"}``, plus ``exception`` when the
    record carries one; one line per record (newlines in the message stay escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {"time": f"{stamp}.{int(record.msecs):03d}Z", "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(*, verbose: bool = False, json_lines: bool = False) -> None:
    """The root logger at DEBUG (``verbose``) or WARNING, as text or JSON lines on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler], force=True)
