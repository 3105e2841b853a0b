"""Read Jetson ``tegrastats`` output, and measure energy per image during a benchmark.

``tegrastats`` prints one line per interval. Its fields drift between JetPack
releases, so the parser looks for each field on its own and keeps what it finds:

* JetPack 4/5 (L4T 32/35): ``GR3D_FREQ 59%@1377`` or ``0%@[0,0]``, zone names in
  capitals (``CPU@44.5C``), rails ``VDD_IN 3140/3208`` (JetPack 4, no unit) or
  ``VDD_GPU_SOC 2340mW/2340mW`` (AGX Orin: VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0, ...).
* JetPack 6 (L4T 36, Orin Nano/NX): ``GR3D_FREQ 0%@[305]``, lower-case zones
  (``cpu@46.531C tj@48.843C``), rails ``VDD_IN``, ``VDD_CPU_GPU_CV``, ``VDD_SOC`` as
  ``cur mW/avg mW``.
* JetPack 7 (L4T 38/39, Thor): ``GR3D_FREQ @[314,314,314]`` (no load) or no GR3D
  field at all, rails ``VDD_GPU``, ``VDD_CPU_SOC_MSS``, ``VIN_SYS_5V0``, ``VIN``,
  sometimes with three values (``cur/avg/max``) and negative offsets (``-392mW``).

Sensors that are off read ``-256C`` and are dropped. The whole-module power is
the input rail: ``VDD_IN`` (Orin Nano/NX, Xavier), ``VIN`` (Thor), ``POM_5V_IN``
(Nano); AGX Orin's tegrastats has no input rail, so there it is the sum of the
listed rails (a lower bound of the module's draw).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..errors import BackendUnavailable, InputError

#: Input rails in order of preference: the module's total input power.
INPUT_RAILS = ("VDD_IN", "VIN", "POM_5V_IN")
#: Rail names that are placeholders, not measurements (AGX Orin prints "NC 0mW/0mW").
_IGNORED_RAILS = {"NC"}
#: Lower than any real junction temperature: tegrastats prints -256C for sensors that are off.
_MIN_VALID_TEMP_C = -50.0

_TIMESTAMP = re.compile(r"^\s*(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?")
_GR3D = re.compile(r"\bGR3D_FREQ (?:(\d+)%)?(?:@\[?([\d,]+)\]?)?")
_EMC = re.compile(r"\bEMC_FREQ (?:(\d+)%)?(?:@(\d+))?")
_TEMP = re.compile(r"(?<![\w@])([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
# "NAME cur/avg[/max]" with optional mW units (JetPack 4 prints none); the lookahead
# keeps "RAM 2461/7620MB" out.
_RAIL_MULTI = re.compile(
    r"\b([A-Z][A-Z0-9_]*) (-?\d+)(?:mW)?/(-?\d+)(?:mW)?(?:/(-?\d+)(?:mW)?)?(?=\s|$)"
)
# "NAME cur mW" without an average (some builds): the unit is required here.
_RAIL_SINGLE = re.compile(r"\b([A-Z][A-Z0-9_]*) (-?\d+)mW(?=\s|$)")


@dataclass(frozen=True)
class Rail:
    """One power rail: instantaneous and running-average power in mW."""

    name: str
    current_mw: float
    average_mw: Optional[float] = None
    max_mw: Optional[float] = None


@dataclass
class TegraSample:
    """What one tegrastats line says. Fields the line lacks are None / empty."""

    timestamp: Optional[str] = None
    ram_used_mb: Optional[int] = None
    ram_total_mb: Optional[int] = None
    swap_used_mb: Optional[int] = None
    swap_total_mb: Optional[int] = None
    cpu_load_percent: List[Optional[int]] = field(default_factory=list)  # None: core off
    cpu_freq_mhz: List[Optional[int]] = field(default_factory=list)
    gpu_load_percent: Optional[int] = None
    gpu_freq_mhz: List[int] = field(default_factory=list)  # one per GPC where printed
    emc_load_percent: Optional[int] = None
    emc_freq_mhz: Optional[int] = None
    temps_c: Dict[str, float] = field(default_factory=dict)
    rails: Dict[str, Rail] = field(default_factory=dict)

    def input_power(self) -> Optional[Tuple[str, float]]:
        """(source, mW) of the module's input power, or None when the line has no rails."""
        for name in INPUT_RAILS:
            if name in self.rails:
                return name, self.rails[name].current_mw
        if self.rails:
            names = sorted(self.rails)
            return "+".join(names), sum(r.current_mw for r in self.rails.values())
        return None


def parse_line(line: str) -> TegraSample:
    """Parse one tegrastats line. Raises InputError when it holds none of the known fields."""
    s = TegraSample()
    m = _TIMESTAMP.match(line)
    if m:
        s.timestamp = m.group(1)
    m = _RAM.search(line)
    if m:
        s.ram_used_mb, s.ram_total_mb = int(m.group(1)), int(m.group(2))
    m = _SWAP.search(line)
    if m:
        s.swap_used_mb, s.swap_total_mb = int(m.group(1)), int(m.group(2))
    m = _CPU.search(line)
    if m:
        shared_freq = int(m.group(2)) if m.group(2) else None  # old "CPU [a%,b%]@freq" form
        for core in m.group(1).split(","):
            core = core.strip()
            cm = re.fullmatch(r"(\d+)%(?:@(\d+))?", core)
            if cm:
                s.cpu_load_percent.append(int(cm.group(1)))
                s.cpu_freq_mhz.append(int(cm.group(2)) if cm.group(2) else shared_freq)
            elif core:
                s.cpu_load_percent.append(None)  # "off"
                s.cpu_freq_mhz.append(None)
    m = _GR3D.search(line)
    if m:
        s.gpu_load_percent = int(m.group(1)) if m.group(1) is not None else None
        if m.group(2):
            s.gpu_freq_mhz = [int(v) for v in m.group(2).split(",") if v]
    m = _EMC.search(line)
    if m:
        s.emc_load_percent = int(m.group(1)) if m.group(1) is not None else None
        s.emc_freq_mhz = int(m.group(2)) if m.group(2) else None
    for name, value in _TEMP.findall(line):
        v = float(value)
        if v > _MIN_VALID_TEMP_C:
            s.temps_c[name] = v
    for rm in _RAIL_MULTI.finditer(line):
        name = rm.group(1)
        if name in _IGNORED_RAILS or name in ("RAM", "SWAP"):
            continue
        s.rails[name] = Rail(
            name,
            float(rm.group(2)),
            float(rm.group(3)),
            float(rm.group(4)) if rm.group(4) is not None else None,
        )
    for rm in _RAIL_SINGLE.finditer(line):
        name = rm.group(1)
        if name not in _IGNORED_RAILS and name not in s.rails:
            s.rails[name] = Rail(name, float(rm.group(2)))
    if s.ram_total_mb is None and not s.rails and not s.cpu_load_percent:
        raise InputError(f"not a tegrastats line: {line.strip()[:120]!r}")
    return s


# --------------------------------------------------------------------------- energy


def integrate_energy_j(samples: Sequence[Tuple[float, float]], t0: float, t1: float) -> float:
    """Energy in joules over [t0, t1] from (time s, power mW) samples, trapezoids between samples.

    Before the first and after the last sample inside the window the nearest
    sample's power is held. Raises InputError when no sample is usable.
    """
    if t1 <= t0:
        raise InputError(f"energy window must have t1 > t0, got [{t0}, {t1}]")
    pts = sorted(samples)
    if not pts:
        raise InputError("no power samples: was tegrastats running during the benchmark?")

    def power_at(t: float) -> float:
        if t <= pts[0][0]:
            return pts[0][1]
        if t >= pts[-1][0]:
            return pts[-1][1]
        for (ta, pa), (tb, pb) in zip(pts, pts[1:]):
            if ta <= t <= tb:
                return pa if tb == ta else pa + (pb - pa) * (t - ta) / (tb - ta)
        return pts[-1][1]  # pragma: no cover - the loop covers the range

    knots = [t0] + [t for t, _ in pts if t0 < t < t1] + [t1]
    energy_mj = 0.0
    for a, b in zip(knots, knots[1:]):
        energy_mj += 0.5 * (power_at(a) + power_at(b)) * (b - a)
    return energy_mj / 1000.0


@dataclass(frozen=True)
class EnergyReport:
    """Energy of a benchmark window measured on one rail."""

    source: str
    seconds: float
    images: int
    samples: int
    mean_power_w: float
    energy_j: float
    energy_per_image_j: float
    idle_power_w: Optional[float] = None  # subtracted baseline, when given
    dynamic_energy_per_image_j: Optional[float] = None

    def as_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)


def energy_per_image(
    samples: Sequence[Tuple[float, TegraSample]],
    t0: float,
    t1: float,
    images: int,
    *,
    idle_power_mw: Optional[float] = None,
) -> EnergyReport:
    """Energy per image over [t0, t1] from timed samples, on the module's input rail."""
    if images <= 0:
        raise InputError(f"images must be positive, got {images}")
    power: List[Tuple[float, float]] = []
    source = None
    for t, s in samples:
        p = s.input_power()
        if p is None:
            continue
        if source is None:
            source = p[0]
        if p[0] == source:  # never mix rails within one measurement
            power.append((t, p[1]))
    if source is None:
        raise InputError(
            "tegrastats printed no power rails (on some images it needs root to read the INA sensors: "
            "run the benchmark with sudo)"
        )
    inside = [tp for tp in power if t0 <= tp[0] <= t1]
    energy = integrate_energy_j(power, t0, t1)
    seconds = t1 - t0
    dyn = None
    if idle_power_mw is not None:
        dyn = (energy - idle_power_mw / 1000.0 * seconds) / images
    return EnergyReport(
        source=source,
        seconds=seconds,
        images=images,
        samples=len(inside),
        mean_power_w=energy / seconds,
        energy_j=energy,
        energy_per_image_j=energy / images,
        idle_power_w=None if idle_power_mw is None else idle_power_mw / 1000.0,
        dynamic_energy_per_image_j=dyn,
    )


def rail_power_w(samples: Sequence[Tuple[float, TegraSample]], t0: float, t1: float) -> Dict[str, float]:
    """Mean power of every rail (W) over [t0, t1], integrated like the energy (nearest sample held
    at the window's edges), so a window shorter than the sampling interval still gets the power
    tegrastats saw around it; the total, where tegrastats prints one, is the module input rail
    (see :meth:`TegraSample.input_power`)."""
    per_rail: Dict[str, List[Tuple[float, float]]] = {}
    for t, s in samples:
        for name, rail in s.rails.items():
            per_rail.setdefault(name, []).append((t, rail.current_mw))
    return {name: integrate_energy_j(pts, t0, t1) / (t1 - t0) for name, pts in sorted(per_rail.items())}


# --------------------------------------------------------------------------- sampler


class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` in the background and keeps timed samples.

    Use as a context manager around the benchmark; mark the window with
    :meth:`now` and ask :meth:`energy_per_image` afterwards::

        with TegrastatsSampler(interval_ms=50) as ts:
            t0 = ts.now(); run(images); t1 = ts.now()
        report = ts.energy_per_image(t0, t1, len(images))
    """

    def __init__(self, interval_ms: int = 100, command: Union[str, Sequence[str]] = "tegrastats"):
        if interval_ms <= 0:
            raise InputError(f"interval_ms must be positive, got {interval_ms}")
        self.interval_ms = interval_ms
        self.command = [command] if isinstance(command, str) else list(command)
        self.samples: List[Tuple[float, TegraSample]] = []
        self.unparsed: List[str] = []
        self._proc: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    @staticmethod
    def available(command: str = "tegrastats") -> bool:
        """Whether a tegrastats executable is on PATH (Jetson only)."""
        return shutil.which(command) is not None

    @staticmethod
    def now() -> float:
        """The sampler's clock (time.monotonic), for marking benchmark windows."""
        return time.monotonic()

    def start(self) -> "TegrastatsSampler":
        exe = shutil.which(self.command[0]) or (self.command[0] if "/" in self.command[0] else None)
        if exe is None:
            raise BackendUnavailable(
                f"'{self.command[0]}' not found: energy per image needs a Jetson with tegrastats (JetPack)"
            )
        argv = [exe] + self.command[1:] + ["--interval", str(self.interval_ms)]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read, name="tegrastats-reader", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            t = time.monotonic()
            try:
                sample = parse_line(line)
            except InputError:
                with self._lock:
                    self.unparsed.append(line.rstrip("\n"))
                continue
            with self._lock:
                self.samples.append((t, sample))

    def stop(self) -> None:
        """Stop the background process (only the one this sampler started) and the reader."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "TegrastatsSampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> List[Tuple[float, TegraSample]]:
        with self._lock:
            return list(self.samples)

    def energy_per_image(
        self, t0: float, t1: float, images: int, *, idle_power_mw: Optional[float] = None
    ) -> EnergyReport:
        """Energy per image over a window marked with :meth:`now`."""
        return energy_per_image(self.snapshot(), t0, t1, images, idle_power_mw=idle_power_mw)

    def idle_power_mw(self, t0: float, t1: float) -> float:
        """Mean input-rail power over an idle window (a baseline to subtract)."""
        report = energy_per_image(self.snapshot(), t0, t1, 1)
        return report.mean_power_w * 1000.0
