"""The command line starts fast for commands that need no model: `edgespec revoke` must return
within 3 s, and importing torch alone takes seconds. Only the plugin module of
the command being run is imported (edgespec.cli.PLUGIN_COMMANDS), and errors are matched without
importing their modules (edgespec.errors.KNOWN_ERRORS)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "cv2")

# Each command line runs inside one interpreter; after each, no heavy module may be loaded.
CHECK = r"""
import contextlib, io, json, sys
from edgespec.cli import main
report = {}
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main(argv)
        except SystemExit:
            pass
    report[" ".join(argv)] = [m for m in %r if m in sys.modules]
print(json.dumps(report))
""" % (HEAVY,)


def test_light_commands_do_not_import_torch(tmp_path: Path) -> None:
    import json

    home = tmp_path / "fleet"
    argvs = [["--help"], ["revoke", "--help"], ["flash", "--help"], ["ca", "--help"], ["keys", "--help"],
             ["broker-files", "--help"], ["broker", "--help"], ["dashboard", "--help"],
             ["keys", "init", "--home", str(home)], ["keys", "list", "--home", str(home)],
             ["ca", "init", "--dir", str(tmp_path / "ca")],
             ["revoke", "no-such-device", "--home", str(home)]]
    out = subprocess.run([sys.executable, "-c", CHECK, json.dumps(argvs)], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "EDGESPEC_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {" ".join(a): [] for a in argvs}


def test_revoke_returns_within_3_s(tmp_path: Path) -> None:
    edgespec = [sys.executable, "-m", "edgespec.cli"]
    home = str(tmp_path / "fleet")
    env = {**os.environ, "EDGESPEC_HOME": home}
    for argv in (["keys", "init"], ["flash", "cam-fast", "--out", str(tmp_path / "b"), "--broker",
                                    "mqtt://127.0.0.1:1883"]):
        subprocess.run([*edgespec, *argv, "--home", home], check=True, capture_output=True, env=env,
                       cwd=REPO, timeout=60)
    t0 = time.monotonic()
    out = subprocess.run([*edgespec, "revoke", "cam-fast", "--home", home], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=60)
    seconds = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert "revoked cam-fast" in out.stdout
    assert seconds < 3.0, f"revoke took {seconds:.1f} s"
