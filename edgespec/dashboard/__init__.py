"""`edgespec dashboard`: a live web page of the fleet.

The server only hands out static files and `config.json` (the broker's websockets URL, the
topic prefix and, if given, the dashboard account); the page itself connects to Mosquitto over
websockets with mqtt.js (vendored in `static/vendor/`, never loaded from a CDN) and subscribes
to the result, availability and verifier stats topics.

    edgespec dashboard [--http-port 8080] [--broker-ws ws://127.0.0.1:9001] [--prefix P]
                       [--username dashboard --password-file FILE | --broker-dir DIR]

The dashboard account is read-only in the broker's ACL (broker/acl.template), but its password
is handed to every browser that can load the page: keep `--http-host` on loopback or behind
your own access control when a password is configured.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import signal
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from schemas.topics import PROTOCOL

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_HTTP_PORT = 8080
DEFAULT_WS_PORT = 9001  # broker/mosquitto-dev.conf's websockets listener
CREDENTIALS_DIR = "credentials"  # inside a broker folder (edgespec broker-files init)

# The page talks only to its own origin and to the broker's websockets listener.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
                                "style-src 'self'; script-src 'self'; worker-src 'self' blob:; object-src 'none'; "
                                "base-uri 'none'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def page_config(*, broker_ws: str | None, prefix: str, username: str | None = None,
                password: str | None = None) -> dict:
    """What the page reads from `/config.json`. `broker_ws` None: the page uses
    ws://<the page's own host>:9001."""
    return {"broker_ws": broker_ws, "default_ws_port": DEFAULT_WS_PORT, "prefix": prefix,
            "username": username, "password": password}


def _static_file(url_path: str) -> Path | None:
    """The file under STATIC_DIR that a GET names, or None (no directory listings, no `..`)."""
    rel = url_path.split("?", 1)[0].split("#", 1)[0].lstrip("/") or "index.html"
    candidate = (STATIC_DIR / rel).resolve()
    if STATIC_DIR not in candidate.parents or not candidate.is_file():
        return None
    return candidate


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgespec-dashboard"
    config_body: bytes = b"{}"  # set per server by DashboardServer

    def do_GET(self) -> None:  # http.server's naming
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        if self.path.split("?", 1)[0] == "/config.json":
            body, ctype = self.config_body, "application/json"
        else:
            path = _static_file(self.path)
            if path is None:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            body = path.read_bytes()
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype in ("application/javascript", "text/javascript"):
                ctype += "; charset=utf-8"
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # quiet: the page polls nothing
        pass


class DashboardServer:
    """The page's HTTP server in a background thread. Use as a context manager."""

    def __init__(self, config: dict, host: str = "127.0.0.1", port: int = 0):
        handler = type("DashboardHandler", (_Handler,), {"config_body": json.dumps(config).encode()})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        assert isinstance(host, str)  # an AF_INET address
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}/"

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="dashboard-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=2)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_password(args: argparse.Namespace) -> tuple[str | None, str | None]:
    username, password = args.username, None
    if args.password_file:
        password = Path(args.password_file).read_text(encoding="utf-8").strip()
    elif args.broker_dir:
        username = username or "dashboard"
        path = Path(args.broker_dir) / CREDENTIALS_DIR / f"{username}.password"
        if not path.is_file():
            raise SystemExit(f"edgespec dashboard: error: no password for '{username}' at {path} "
                             "(make it with `edgespec broker-files init --dashboard NAME`)")
        password = path.read_text(encoding="utf-8").strip()
    if password is not None and not username:
        raise SystemExit("edgespec dashboard: error: --password-file needs --username")
    return username, password


def cmd_dashboard(args: argparse.Namespace) -> int:
    from edgespec.config import DEFAULTS

    username, password = _read_password(args)
    config = page_config(broker_ws=args.broker_ws, prefix=args.prefix or DEFAULTS.prefix,
                         username=username, password=password)
    server = DashboardServer(config, host=args.http_host, port=args.http_port).start()
    broker = args.broker_ws or f"ws://<this page's host>:{DEFAULT_WS_PORT}"
    print(f"dashboard on {server.url} (broker {broker}, prefix {config['prefix']}); Ctrl-C stops it",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # both end it at once; it has no children
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


def register(sub) -> None:
    p = sub.add_parser("dashboard", help="a live web page of the fleet (captions, availability, verifiers)")
    p.add_argument("--http-host", default="127.0.0.1", help="address the page is served on (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT, help="0: a free port")
    p.add_argument("--broker-ws", metavar="URL",
                   help=f"the broker's websockets listener, ws://HOST:PORT or wss://... "
                        f"(default: ws://<the page's host>:{DEFAULT_WS_PORT}, `edgespec broker`'s)")
    p.add_argument("--prefix", help=f"topic prefix (env EDGESPEC_PREFIX, default {PROTOCOL})")
    p.add_argument("--username", help="broker account (the read-only dashboard account of broker-files init)")
    p.add_argument("--password-file", metavar="FILE", help="file holding that account's password")
    p.add_argument("--broker-dir", metavar="DIR",
                   help="a broker folder of `edgespec broker-files init`: read credentials/<username>.password "
                        "(username default `dashboard`)")
    p.set_defaults(func=cmd_dashboard)
