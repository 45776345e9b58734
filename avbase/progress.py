"""Progress that reads in a terminal and in logs (CI, ``kubectl logs``).

On a terminal: tqdm's redrawn bar. Otherwise (stderr is a pipe or a file): one plain line every
``AVFUSION_PROGRESS_SECONDS`` seconds (default 30) and one at the end, e.g.::

    shards build: 120/800 videos (15%) 3.2 videos/s, elapsed 00:37, ETA 03:32

Pure Python on top of tqdm, so every layer (preprocess, pipeline, benchmarks) may use it.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt}{unit} ({percentage:.0f}%) {rate_noinv_fmt}, elapsed {elapsed}, ETA {remaining}"
LINE_FORMAT_NO_TOTAL = "{desc}: {n_fmt}{unit} {rate_noinv_fmt}, elapsed {elapsed}"


class LineProgress(tqdm):
    """tqdm that writes a whole line per refresh instead of redrawing one with ``\\r``; the
    line at ``close()`` (overall rate) is written only when it says something new."""

    _shown = -1

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing its bar: nothing to clear in a log
            return False
        self._shown = self.n
        self.fp.write((msg if msg is not None else self.__str__()).strip("\r") + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if not getattr(self, "disable", True) and self.n != self._shown:
            self._ema_dt = lambda: None  # overall rate, as tqdm's own final line
            self.display()
        self.leave = False
        super().close()


def log_interval() -> float:
    """Seconds between progress lines when not on a terminal (``AVFUSION_PROGRESS_SECONDS``)."""
    raw = os.environ.get("AVFUSION_PROGRESS_SECONDS", "30")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"AVFUSION_PROGRESS_SECONDS: expected seconds > 0, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"AVFUSION_PROGRESS_SECONDS: expected seconds > 0, got {raw!r}")
    return value


def progress(
    iterable=None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    initial: int = 0,
    file=None,
) -> tqdm:
    """A tqdm bar on a terminal, else a :class:`LineProgress` that logs a line every few seconds."""
    file = file or sys.stderr
    if file.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file)
    fmt = LINE_FORMAT if total is not None else LINE_FORMAT_NO_TOTAL
    # " videos": the formats put no space before {unit}; rate_noinv_fmt (always "videos/s", never
    # "s/ videos") appends it as is
    return LineProgress(
        iterable,
        total=total,
        desc=desc,
        unit=" " + unit,
        initial=initial,
        file=file,
        mininterval=log_interval(),
        maxinterval=float("inf"),
        bar_format=fmt,
        dynamic_ncols=False,
        ascii=True,
    )
