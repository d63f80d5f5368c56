"""A real headless Chromium for the dashboard tests: Debian's `chromium` driven by npm
`playwright-core` (installed by `make setup` into tests/browser/node_modules) through
tests/browser/driver.mjs, one JSON command per line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (`make setup` installs Debian's chromium)"
    if shutil.which("node") is None:
        return "no node on PATH (`make setup` installs Node.js)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed in tests/browser (`make setup` runs npm ci there)"
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    """One Chromium with one page; each method is one command answered by the driver."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(["node", str(BROWSER_DIR / "driver.mjs")], cwd=BROWSER_DIR,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      env={**os.environ, "CHROMIUM": CHROMIUM})

    def _call(self, **cmd) -> dict:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(cmd) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()  # the driver answers every command, also failures
        if not line:
            raise BrowserError(f"browser driver exited ({self._proc.poll()}) during {cmd['cmd']}")
        out = json.loads(line)
        if not out.get("ok"):
            raise BrowserError(f"{cmd['cmd']}: {out.get('error')}")
        return out

    def open(self, url: str, width: int = 1280, height: int = 900) -> None:
        self._call(cmd="open", url=url, width=width, height=height)

    def wait(self, expr: str, timeout_s: float = 5.0):
        """Wait until the JS expression is truthy in the page; its value."""
        return self._call(cmd="wait", expr=expr, timeout_ms=int(timeout_s * 1000))["value"]

    def eval(self, expr: str):
        return self._call(cmd="eval", expr=expr)["value"]

    def screenshot(self, path: Path, full_page: bool = True) -> None:
        self._call(cmd="screenshot", path=str(Path(path).resolve()), full_page=full_page)

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._call(cmd="close")
                self._proc.wait(timeout=10)
            except (BrowserError, OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
