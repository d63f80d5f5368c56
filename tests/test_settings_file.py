"""The optional settings file: flag defaults per command, below flags and EDGESPEC_* variables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgespec import settings_file
from edgespec.cli import build_parser

SETTINGS = """
broker = "mqtt://127.0.0.1:1999"
threads = 3

[verifier]
max_batch = 3

[camera]
device_id = "cam-file"
"""


def _args(tmp_path: Path, argv: list[str]):
    (tmp_path / "s.toml").write_text(SETTINGS)
    path, argv = settings_file.settings_path(["--settings", str(tmp_path / "s.toml"), *argv])
    parser = build_parser(argv)
    assert path is not None
    settings_file.apply(parser, argv[0], settings_file.load(path), path)
    return parser.parse_args(argv)


def test_file_values_become_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in settings_file.ENV_OF.values():
        monkeypatch.delenv(var, raising=False)
    args = _args(tmp_path, ["verifier"])
    assert (args.max_batch, args.broker, args.threads) == (3, "mqtt://127.0.0.1:1999", 3)
    assert _args(tmp_path, ["camera"]).device_id == "cam-file"


def test_flags_and_environment_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _args(tmp_path, ["verifier", "--max-batch", "7"]).max_batch == 7
    monkeypatch.setenv("EDGESPEC_BROKER", "mqtt://127.0.0.1:2000")
    assert _args(tmp_path, ["verifier"]).broker != "mqtt://127.0.0.1:1999"


def test_settings_option_is_taken_only_before_the_command() -> None:
    assert settings_file.settings_path(["--settings=a.toml", "camera", "--config", "b"]) == (
        "a.toml", ["camera", "--config", "b"])
    assert settings_file.settings_path(["camera", "--settings", "x"])[1] == ["camera", "--settings", "x"]


@pytest.mark.parametrize(("text", "message"), [
    ("[camera]\nfoo = 1\n", "[camera] foo: `edgespec camera` has no such setting"),
    ("[nocommand]\nfoo = 1\n", "[nocommand] names no edgespec command"),
    ("x = [\n", "not TOML"),
])
def test_a_bad_file_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.toml").write_text(text)
    run = subprocess.run([sys.executable, "-m", "edgespec.cli", "--settings", str(tmp_path / "bad.toml"), "camera"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
