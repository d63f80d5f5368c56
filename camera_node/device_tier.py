"""What this device is (memory, cores, accelerator, battery), its tier, and the draft it runs.

Tiers, lowest first (`classify`; the first row that matches wins):

==============  =====================================================
``accelerated`` a CUDA accelerator is present
``standard``    at least 4 GiB of memory and 4 cores
``small``       at least 1 GiB of memory and 2 cores
``micro``       anything less
==============  =====================================================

The drafts a fleet may run are configured as a list of entries (TOML ``[[drafts]]`` tables:
``tier``, ``model``, ``quantize`` = ``"none"`` or ``"int8"``); `pick_draft` takes the best
entry the device's tier allows: the entries of its own tier, else of the next tier down, and
so on (the first listed within a tier). `parse_drafts` checks such a list and raises
`DraftConfigError` with a one-line message naming the bad entry.

`detect_device` reads ``proc/meminfo`` and ``sys/class/power_supply`` under a root folder
(``/`` by default; tests pass a fake tree); everything else here is pure.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal

GIB = 1 << 30

Quantize = Literal["none", "int8"]
QUANTIZE: tuple[Quantize, ...] = ("none", "int8")


class Tier(str, Enum):
    MICRO = "micro"
    SMALL = "small"
    STANDARD = "standard"
    ACCELERATED = "accelerated"

    @property
    def rank(self) -> int:
        return list(Tier).index(self)


# (tier, least memory in bytes, least cores) of the tiers without an accelerator, highest first.
THRESHOLDS: tuple[tuple[Tier, int, int], ...] = (
    (Tier.STANDARD, 4 * GIB, 4),
    (Tier.SMALL, 1 * GIB, 2),
)


@dataclass(frozen=True)
class Battery:
    """Charge fraction (0..1) and whether external power is connected."""

    fraction: float
    on_mains: bool


@dataclass(frozen=True)
class DeviceInfo:
    memory_bytes: int
    cores: int
    accelerator: str | None  # e.g. "cuda: NVIDIA H100"; None: CPU only
    battery: Battery | None  # None: no battery (on mains)
    battery_source: str = "none"  # "sysfs", "configured" or "none"


def classify(info: DeviceInfo) -> Tier:
    """The device's tier by the thresholds in the module's table."""
    if info.accelerator:
        return Tier.ACCELERATED
    for tier, memory, cores in THRESHOLDS:
        if info.memory_bytes >= memory and info.cores >= cores:
            return tier
    return Tier.MICRO


def read_meminfo(root: Path) -> int | None:
    """MemTotal from ``<root>/proc/meminfo``, in bytes; None when absent or unreadable."""
    try:
        text = (root / "proc" / "meminfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                unit = parts[2].lower() if len(parts) > 2 else "kb"
                return int(parts[1]) * (1024 if unit == "kb" else 1)
    return None


def sysconf_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def read_battery(root: Path) -> Battery | None:
    """The first battery under ``<root>/sys/class/power_supply`` (type ``Battery``, with a
    ``capacity``), or None. On mains when its status is Charging, Full or Not charging, or
    when a ``Mains`` supply reports ``online`` 1."""
    supplies = root / "sys" / "class" / "power_supply"
    try:
        entries = sorted(supplies.iterdir())
    except OSError:
        return None
    mains = any(_read(e / "type") == "Mains" and _read(e / "online") == "1" for e in entries)
    for entry in entries:
        if _read(entry / "type") != "Battery":
            continue
        capacity = _read(entry / "capacity")
        if capacity is None or not capacity.isdigit():
            continue
        status = (_read(entry / "status") or "").lower()
        charging = status in ("charging", "full", "not charging")
        return Battery(min(int(capacity), 100) / 100, mains or charging)
    return None


def cuda_accelerator() -> str | None:
    """``cuda: <name>`` when torch sees a CUDA device (torch is imported here, not before)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return f"cuda: {torch.cuda.get_device_name(0)}"


def detect_device(root: Path | str = "/", *, configured_battery: Battery | None = None,
                  accelerator: Callable[[], str | None] = cuda_accelerator,
                  cores: Callable[[], int] = usable_cores) -> DeviceInfo:
    """This device: memory from ``proc/meminfo`` under ``root`` (else sysconf), usable cores,
    the accelerator probe's answer, and the battery from sysfs under ``root``, else
    ``configured_battery`` (a device whose battery the kernel does not report)."""
    root = Path(root)
    memory = read_meminfo(root) or sysconf_memory() or 0
    battery = read_battery(root)
    source = "sysfs"
    if battery is None:
        battery, source = configured_battery, "configured" if configured_battery is not None else "none"
    return DeviceInfo(memory_bytes=memory, cores=cores(), accelerator=accelerator(), battery=battery,
                      battery_source=source)


class DraftConfigError(ValueError):
    """A bad entry in the configured list of drafts (the message is one line)."""


@dataclass(frozen=True)
class DraftEntry:
    tier: Tier
    model: str  # a model folder or a fetched model's name
    quantize: Quantize = "none"


DRAFT_KEYS = ("tier", "model", "quantize")


def parse_drafts(items: object, where: str = "drafts") -> list[DraftEntry]:
    """Entries from a TOML-shaped value: a list of tables with ``tier``, ``model`` and an
    optional ``quantize``."""
    if not isinstance(items, list):
        raise DraftConfigError(f"{where}: expected a list of tables ([[{where}]]), got {type(items).__name__}")
    tiers = ", ".join(t.value for t in Tier)
    entries = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise DraftConfigError(f"{at}: expected a table with tier and model, got {type(item).__name__}")
        unknown = sorted(set(item) - set(DRAFT_KEYS))
        if unknown:
            raise DraftConfigError(f"{at}: unknown key {unknown[0]!r} (keys: {', '.join(DRAFT_KEYS)})")
        tier, model, quantize = item.get("tier"), item.get("model"), item.get("quantize", "none")
        if tier not in {t.value for t in Tier}:
            raise DraftConfigError(f"{at}: tier {tier!r} is not one of {tiers}")
        if not isinstance(model, str) or not model.strip():
            raise DraftConfigError(f"{at}: model must be a non-empty string (a model folder or name)")
        if quantize not in QUANTIZE:
            raise DraftConfigError(f"{at}: quantize {quantize!r} is not one of {', '.join(QUANTIZE)}")
        entries.append(DraftEntry(Tier(tier), model, quantize))
    return entries


def pick_draft(tier: Tier, entries: list[DraftEntry]) -> DraftEntry | None:
    """The best entry ``tier`` allows: the highest tier not above it (first listed on a tie);
    None when every entry needs a higher tier."""
    allowed = [e for e in entries if e.tier.rank <= tier.rank]
    if not allowed:
        return None
    top = max(e.tier.rank for e in allowed)
    return next(e for e in allowed if e.tier.rank == top)
