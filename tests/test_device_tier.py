"""Device detection against a fake /proc and /sys tree, the tier thresholds, and the draft list."""

from __future__ import annotations

from pathlib import Path

import pytest

from camera_node.device_tier import (
    GIB, Battery, DeviceInfo, DraftConfigError, DraftEntry, Tier, classify, detect_device, parse_drafts,
    pick_draft, read_battery, read_meminfo,
)


def fake_root(tmp_path: Path, *, mem_kb: int | None = 2_000_000,
              supplies: dict[str, dict[str, str]] | None = None) -> Path:
    if mem_kb is not None:
        (tmp_path / "proc").mkdir()
        (tmp_path / "proc" / "meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree:        1000 kB\n")
    for name, files in (supplies or {}).items():
        folder = tmp_path / "sys" / "class" / "power_supply" / name
        folder.mkdir(parents=True)
        for key, value in files.items():
            (folder / key).write_text(value + "\n")
    return tmp_path


def detect(root: Path, **kw) -> DeviceInfo:
    return detect_device(root, accelerator=lambda: None, cores=lambda: 4, **kw)


def test_memory_from_meminfo(tmp_path: Path) -> None:
    info = detect(fake_root(tmp_path, mem_kb=2_000_000))
    assert info.memory_bytes == 2_000_000 * 1024
    assert info.cores == 4 and info.accelerator is None


def test_memory_falls_back_to_sysconf(tmp_path: Path) -> None:
    assert read_meminfo(tmp_path) is None
    assert detect(fake_root(tmp_path, mem_kb=None)).memory_bytes > 0


def test_battery_from_sysfs(tmp_path: Path) -> None:
    root = fake_root(tmp_path, supplies={
        "AC": {"type": "Mains", "online": "0"},
        "BAT0": {"type": "Battery", "capacity": "37", "status": "Discharging"},
    })
    info = detect(root)
    assert info.battery == Battery(0.37, on_mains=False) and info.battery_source == "sysfs"


@pytest.mark.parametrize(("status", "mains_online", "on_mains"), [
    ("Charging", "0", True), ("Full", "0", True), ("Discharging", "1", True), ("Discharging", "0", False),
])
def test_battery_mains_status(tmp_path: Path, status: str, mains_online: str, on_mains: bool) -> None:
    root = fake_root(tmp_path, supplies={
        "ADP1": {"type": "Mains", "online": mains_online},
        "BAT1": {"type": "Battery", "capacity": "80", "status": status},
    })
    assert read_battery(root) == Battery(0.8, on_mains)


def test_no_battery_uses_the_configured_one(tmp_path: Path) -> None:
    root = fake_root(tmp_path, supplies={"usb": {"type": "USB", "online": "1"},
                                         "BAT9": {"type": "Battery", "status": "Unknown"}})  # no capacity
    assert detect(root).battery is None and detect(root).battery_source == "none"
    configured = Battery(0.5, on_mains=False)
    info = detect(root, configured_battery=configured)
    assert info.battery == configured and info.battery_source == "configured"


@pytest.mark.parametrize(("memory", "cores", "accel", "tier"), [
    (512 << 20, 1, None, Tier.MICRO),
    (8 * GIB, 1, None, Tier.MICRO),  # plenty of memory, one core
    (1 * GIB, 2, None, Tier.SMALL),
    (3 * GIB, 8, None, Tier.SMALL),
    (4 * GIB, 4, None, Tier.STANDARD),
    (1 * GIB, 1, "cuda: tiny", Tier.ACCELERATED),
])
def test_classify(memory: int, cores: int, accel: str | None, tier: Tier) -> None:
    assert classify(DeviceInfo(memory, cores, accel, None)) is tier


def test_detect_with_the_real_probes_runs() -> None:
    info = detect_device(accelerator=lambda: None)
    assert info.memory_bytes > 0 and info.cores >= 1
    assert classify(info) in Tier


ENTRIES = [
    {"tier": "accelerated", "model": "big-draft"},
    {"tier": "standard", "model": "smollm2-135m-draft"},
    {"tier": "small", "model": "smollm2-135m-draft", "quantize": "int8"},
    {"tier": "small", "model": "other-small"},
]


def test_parse_and_pick() -> None:
    entries = parse_drafts(ENTRIES)
    assert entries[2] == DraftEntry(Tier.SMALL, "smollm2-135m-draft", "int8")
    assert entries[0].quantize == "none"
    assert pick_draft(Tier.ACCELERATED, entries) == entries[0]
    assert pick_draft(Tier.STANDARD, entries) == entries[1]
    assert pick_draft(Tier.SMALL, entries) == entries[2]  # first listed of its tier
    assert pick_draft(Tier.MICRO, entries) is None  # nothing small enough
    assert pick_draft(Tier.ACCELERATED, entries[1:]) == entries[1]  # falls back down
    assert pick_draft(Tier.STANDARD, []) is None


@pytest.mark.parametrize(("items", "message"), [
    ({"tier": "small"}, "drafts: expected a list"),
    (["small"], "drafts[0]: expected a table"),
    ([{"tier": "huge", "model": "m"}], "drafts[0]: tier 'huge' is not one of micro, small, standard, accelerated"),
    ([{"tier": "small"}], "drafts[0]: model must be"),
    ([{"tier": "small", "model": "m"}, {"tier": "small", "model": "m", "quantize": "int4"}],
     "drafts[1]: quantize 'int4' is not one of none, int8"),
    ([{"tier": "small", "model": "m", "gamma": 4}], "drafts[0]: unknown key 'gamma'"),
])
def test_bad_entries_have_one_line_errors(items: object, message: str) -> None:
    with pytest.raises(DraftConfigError) as err:
        parse_drafts(items)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)  # the CLI prints it as one line


def test_tier_command_on_a_fake_device(tmp_path: Path, capsys) -> None:
    from edgespec.cli import main

    (tmp_path / "root").mkdir()
    root = fake_root(tmp_path / "root", mem_kb=2 * 1024 * 1024, supplies={
        "BAT0": {"type": "Battery", "capacity": "55", "status": "Discharging"}})
    drafts = tmp_path / "drafts.toml"
    drafts.write_text('[[drafts]]\ntier = "micro"\nmodel = "default"\n\n'
                      '[[drafts]]\ntier = "accelerated"\nmodel = "default"\nquantize = "int8"\n')
    main(["tier", "--root", str(root), "--drafts", str(drafts)])
    out = capsys.readouterr().out
    assert "memory       2.0 GiB" in out
    assert "battery      55%, on battery (sysfs)" in out
    assert "draft        default (none, an entry of tier micro)" in out


def test_tier_command_bad_drafts_file_is_one_line(tmp_path: Path, capsys) -> None:
    from edgespec.cli import main

    drafts = tmp_path / "drafts.toml"
    drafts.write_text('[[drafts]]\ntier = "small"\nmodel = "x"\nquantize = "fp8"\n')
    with pytest.raises(SystemExit) as stop:
        main(["tier", "--drafts", str(drafts)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"edgespec: error: {drafts}: drafts[0]: quantize 'fp8' is not one of none, int8"


def test_the_camera_takes_the_best_draft_present_for_its_tier(tmp_path: Path) -> None:
    """`edgespec camera --draft-model tier`: the best entry the tier allows whose model is on
    the device; an entry of a higher tier, or one not present, is passed over."""
    from edgespec.config import resolve_model_dir
    from edgespec.tier_commands import draft_for_this_device

    (tmp_path / "root").mkdir()
    root = fake_root(tmp_path / "root", mem_kb=512_000)  # a micro device
    drafts = tmp_path / "drafts.toml"
    drafts.write_text('[[drafts]]\ntier = "standard"\nmodel = "default"\n\n'
                      '[[drafts]]\ntier = "micro"\nmodel = "/nowhere/draft"\n\n'
                      '[[drafts]]\ntier = "micro"\nmodel = "default"\nquantize = "int8"\n')
    folder, quantize, chosen = draft_for_this_device(str(drafts), root=str(root))
    assert folder == resolve_model_dir("default", "draft") and quantize == "int8"
    assert chosen.startswith("tier micro")
    drafts.write_text('[[drafts]]\ntier = "standard"\nmodel = "default"\n')
    with pytest.raises(DraftConfigError, match="no draft of tier micro or below"):
        draft_for_this_device(str(drafts), root=str(root))
