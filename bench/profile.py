"""`python -m bench --profile DIR`: a py-spy profile of the cronloop side of a scenario.

py-spy samples the process from outside (`--nonblocking`: it never pauses the process, so
lateness is not disturbed by the sampler; its own CPU is on another process), writing
collapsed stacks (`--format raw`). From those this module writes, next to them, a flame
graph (`.svg`, plain SVG with a tooltip per frame: open it in a browser) and the top
entries by own time and by total time (`-top.txt`). It knows nothing of schedulers: a
scenario says which process to sample and when.

The files are named `<scenario>-<backend>-<n>` (the environment variable
`BENCH_PROFILE_TO`, set by `bench/__main__.py` per child, holds the path without suffix).
"""

from __future__ import annotations

import html
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ENV = "BENCH_PROFILE_TO"
RATE_HZ = 250  # samples per second: ~5,000 in a 20 s window, at a few % of a core
TOP = 25


def requested() -> Path | None:
    """Where this child should write its profile (without suffix), if asked to."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def window(start: float, end: float | None = None, pid: int | None = None) -> PySpy | None:
    """If this child was asked to profile: py-spy on `pid` (this process by default)
    from wall time `start` to `end` (or `finish()`); else None."""
    base = requested()
    if base is None:
        return None
    return PySpy(base, pid if pid is not None else os.getpid()).between(start, end)


def finish(spy: PySpy | None) -> None:
    if spy is not None:
        spy.finish()


def py_spy() -> str:
    """The py-spy executable beside this interpreter, or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy (and root, or ptrace rights)")
    return found


@dataclass
class PySpy:
    """py-spy recording process `pid` into `<base>.raw.txt`, then rendered."""

    base: Path
    pid: int = field(default_factory=os.getpid)
    proc: subprocess.Popen[bytes] | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _finished: bool = False

    @property
    def raw(self) -> Path:
        return self.base.with_suffix(".raw.txt")

    def start(self, duration_s: float | None = None) -> PySpy:
        cmd = [py_spy(), "record", "--pid", str(self.pid), "--rate", str(RATE_HZ)]
        cmd += ["--nonblocking", "--function", "--format", "raw", "--output", str(self.raw)]
        if duration_s is not None:
            cmd += ["--duration", str(max(1, round(duration_s)))]
        self.base.parent.mkdir(parents=True, exist_ok=True)
        log = self.base.with_suffix(".py-spy.log").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        return self

    def between(self, start: float, end: float | None = None) -> PySpy:
        """Record from wall time `start` to `end` (or to `finish()`), started by a thread
        so the caller goes on; `finish()` joins it and renders."""

        def record() -> None:
            time.sleep(max(0.0, start - time.time()))
            with self._lock:
                if not self._finished:
                    self.start(None if end is None else end - time.time())

        self._thread = threading.Thread(target=record, daemon=True, name="bench-py-spy")
        self._thread.start()
        return self

    def finish(self, timeout_s: float = 60.0) -> None:
        """Stop (if still recording) and render; nothing if the window never began."""
        with self._lock:
            self._finished = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.stop()

    def stop(self) -> None:
        """Stop recording now (py-spy writes what it has on SIGINT) and render it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self.raw.exists():
            render(self.raw, self.base)


def parse(raw: Path) -> Counter[tuple[str, ...]]:
    """py-spy's collapsed stacks: `frame;frame;... count` per line, root first."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks[tuple(frames.split(";"))] += int(count)
    return stacks


def top_entries(stacks: Counter[tuple[str, ...]], n: int = TOP) -> str:
    """The `n` functions with the most own samples, and the `n` with the most in total."""
    total = sum(stacks.values()) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks.items():
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples at {RATE_HZ} Hz (py-spy, active threads only)", "", "own time:"]
    lines += [f"{100 * c / total:6.1f} %  {f}" for f, c in own.most_common(n)]
    lines += ["", "total time (the function and what it calls):"]
    lines += [f"{100 * c / total:6.1f} %  {f}" for f, c in inclusive.most_common(n)]
    return "\n".join(lines) + "\n"


@dataclass
class _Node:
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def flame_svg(stacks: Counter[tuple[str, ...]], title: str, width: int = 1400) -> str:
    """A flame graph (root at the bottom, width = samples), one <rect> per frame with its
    name and share as a tooltip; frames narrower than a pixel are left out."""
    root = _Node()
    for frames, count in stacks.items():
        node = root
        node.count += count
        for frame in frames:
            node = node.children.setdefault(frame, _Node())
            node.count += count
    depth = max((len(f) for f in stacks), default=0)
    row_h, top_pad = 16, 30
    height = top_pad + (depth + 1) * row_h
    total = root.count or 1
    scale = width / total
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="monospace" font-size="11">',
        f'<text x="4" y="18" font-size="14">{html.escape(title)}</text>',
    ]

    def draw(name: str, node: _Node, x: float, level: int) -> None:
        w = node.count * scale
        if w < 1:
            return
        y = height - (level + 1) * row_h
        hue = 20 + zlib.crc32(name.encode()) % 40
        tip = f"{name} ({node.count} samples, {100 * node.count / total:.1f} %)"
        label = name if len(name) * 6.6 < w - 4 else name[: max(0, int((w - 4) / 6.6) - 2)] + ".."
        parts.append(
            f'<g><title>{html.escape(tip)}</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" '
            f'height="{row_h - 1}" fill="hsl({hue},90%,60%)"/>'
            + (f'<text x="{x + 2:.1f}" y="{y + 12}">{html.escape(label)}</text>' if w > 20 else "")
            + "</g>"
        )
        child_x = x
        for child_name, child in sorted(node.children.items()):
            draw(child_name, child, child_x, level + 1)
            child_x += child.count * scale

    x = 0.0
    for name, child in sorted(root.children.items()):
        draw(name, child, x, 0)
        x += child.count * scale
    parts.append("</svg>")
    return "\n".join(parts)


def render(raw: Path, base: Path) -> None:
    """`<base>.svg` and `<base>-top.txt` from py-spy's collapsed stacks."""
    stacks = parse(raw)
    base.with_suffix(".svg").write_text(flame_svg(stacks, base.name), encoding="utf-8")
    base.with_name(base.name + "-top.txt").write_text(top_entries(stacks), encoding="utf-8")
