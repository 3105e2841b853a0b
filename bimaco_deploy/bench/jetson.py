"""What a Jetson says about itself: L4T/JetPack release, power mode, clock locking.

A benchmark on a Jetson means little without the power mode (``nvpmodel``) and whether
``jetson_clocks`` pinned the clocks, so :func:`jetson_facts` records them beside every
result. The parsers take the tools' text as printed by JetPack 5-7:

* ``/etc/nv_tegra_release``: ``# R36 (release), REVISION: 4.3, ...``;
* ``nvpmodel -q``: ``NV Power Mode: MAXN`` and the mode id on the next line (warnings
  such as ``NVPM WARN: ...`` may come first);
* ``jetson_clocks --show``: one ``cpuN: Online=1 Governor=... MinFreq=... MaxFreq=...``
  line per core, ``GPU MinFreq=... MaxFreq=... CurrentFreq=...``, ``EMC ... FreqOverride=0|1``.
  Locked clocks read min == max for every online CPU and the GPU, and FreqOverride=1.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

TEGRA_RELEASE = Path("/etc/nv_tegra_release")

_FREQ = re.compile(r"MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)")


def parse_l4t_release(text: str) -> Optional[str]:
    """``# R36 (release), REVISION: 4.3, ...`` -> ``"36.4.3"`` (None when the text is not that)."""
    m = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", text or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def parse_nvpmodel(text: str) -> Dict[str, Any]:
    """``nvpmodel -q`` output -> {"mode": "MAXN", "id": 0} (None for what it does not say)."""
    mode = re.search(r"NV Power Mode:\s*(\S+)", text or "")
    ident = re.search(r"^\s*(\d+)\s*$", text or "", re.MULTILINE)
    return {"mode": mode.group(1) if mode else None, "id": int(ident.group(1)) if ident else None}


def parse_jetson_clocks(text: str) -> Dict[str, Any]:
    """``jetson_clocks --show`` output -> whether the clocks are locked, and the GPU/EMC/CPU rates.

    ``locked`` is None when the text has no CPU or GPU line to judge by.
    """
    cpus: List[Dict[str, int]] = []
    gpu = emc = None
    emc_override = None
    for line in (text or "").splitlines():
        f = _FREQ.search(line)
        s = line.strip()
        if re.match(r"cpu\d+:", s):
            if f and "Online=0" not in s:
                cpus.append({"min": int(f.group(1)), "max": int(f.group(2)), "current": int(f.group(3))})
        elif s.startswith("GPU ") and f:
            gpu = {"min": int(f.group(1)), "max": int(f.group(2)), "current": int(f.group(3))}
        elif s.startswith("EMC ") and f:
            emc = {"min": int(f.group(1)), "max": int(f.group(2)), "current": int(f.group(3))}
            o = re.search(r"FreqOverride=(\d)", s)
            emc_override = bool(int(o.group(1))) if o else None
    locked = None
    if cpus and gpu is not None:
        locked = all(c["min"] == c["max"] for c in cpus) and gpu["min"] == gpu["max"] and emc_override is not False
    return {
        "locked": locked,
        "online_cpus": len(cpus),
        "cpu_max_khz": max((c["max"] for c in cpus), default=None),
        "gpu": gpu,
        "emc": emc,
        "emc_freq_override": emc_override,
    }


Runner = Callable[[List[str]], Optional[str]]


def _run(cmd: List[str]) -> Optional[str]:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    out = (p.stdout or "") + (p.stderr or "")
    return out if p.returncode == 0 and out.strip() else None


def jetson_facts(run: Runner = _run, release_file: Path = TEGRA_RELEASE) -> Dict[str, Any]:
    """L4T and JetPack versions, power mode and clock state of this machine ({"is_jetson": False} elsewhere).

    ``jetson_clocks --show`` needs root on most images: without it ``jetson_clocks`` is
    reported as None (unknown), never guessed.
    """
    if not release_file.is_file():
        return {"is_jetson": False}
    facts: Dict[str, Any] = {"is_jetson": True, "l4t": parse_l4t_release(release_file.read_text(errors="ignore"))}
    jp = run(["dpkg-query", "--showformat=${Version}", "--show", "nvidia-jetpack"])
    facts["jetpack"] = jp.strip() if jp else None
    nvp = run(["nvpmodel", "-q"])
    facts["nvpmodel"] = parse_nvpmodel(nvp) if nvp else None
    clocks = run(["jetson_clocks", "--show"])
    facts["jetson_clocks"] = parse_jetson_clocks(clocks) if clocks else None
    return facts
