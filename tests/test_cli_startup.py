"""The command line starts fast for commands that need no model: `edgespec revoke` must return
within 3 s, and importing torch alone takes seconds. `--help` and argument errors of every
command import no model library: only the plugin module of the command being run is imported
(edgespec.cli.PLUGIN_COMMANDS), that module imports torch only when the command runs, and
errors are matched without importing their modules (edgespec.errors.KNOWN_ERRORS)."""

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
""" % (HEAVY,)  # noqa: UP031 (the template's own braces rule out str.format)


def _heavy_after(argvs: list[list[str]], env: dict[str, str] | None = None) -> dict[str, list[str]]:
    """The heavy modules loaded after each command line, all run in one fresh interpreter."""
    import json

    out = subprocess.run([sys.executable, "-c", CHECK, json.dumps(argvs)], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=env, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_help_and_argument_error_skips_torch() -> None:
    """`--help` of every command, and a bad flag of every command, load no model library: the
    parser is built without importing what the commands need to run."""
    from edgespec.cli import PLUGIN_COMMANDS

    commands = ["broker", "verifier", "generate", "camera"]
    commands += [command for listed in PLUGIN_COMMANDS.values() for command in listed]
    argvs = [["--help"]] + [[command, "--help"] for command in commands]
    argvs += [[command, "--no-such-flag"] for command in commands]
    argvs += [["fuzz", "--count", "many"], ["bench", "--gamma", "x"], ["generate"]]
    assert _heavy_after(argvs) == {" ".join(a): [] for a in argvs}


def test_edgespec_help_process_imports_no_model_library() -> None:
    """`python -m edgespec.cli --help` as its own process: -X importtime lists every module it
    imported, and none is heavy."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgespec.cli", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "usage: edgespec" in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_light_commands_do_not_import_torch(tmp_path: Path) -> None:
    """Commands that need no model run without loading one."""
    home = tmp_path / "fleet"
    argvs = [["keys", "init", "--home", str(home)], ["keys", "list", "--home", str(home)],
             ["ca", "init", "--dir", str(tmp_path / "ca")],
             ["revoke", "no-such-device", "--home", str(home)]]
    report = _heavy_after(argvs, env={**os.environ, "EDGESPEC_HOME": str(home)})
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
                         env=env, cwd=REPO, timeout=60, check=False)
    seconds = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert "revoked cam-fast" in out.stdout
    assert seconds < 3.0, f"revoke took {seconds:.1f} s"
