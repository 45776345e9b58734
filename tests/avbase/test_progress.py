"""Progress lines for logs (no TTY) and the tqdm bar on a terminal."""

from __future__ import annotations

import io
import re
import time

import pytest

from avbase.progress import LineProgress, progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_carry_count_total_rate_and_eta(monkeypatch):
    monkeypatch.setenv("AVFUSION_PROGRESS_SECONDS", "0.05")
    out = io.StringIO()
    for _ in progress(range(6), total=6, desc="shards build", unit="videos", file=out):
        time.sleep(0.03)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) >= 3
    pattern = re.compile(
        r"^shards build: (\d+)/6 videos \(\d+%\) .* videos/s, elapsed \d\d:\d\d, ETA \S+$"
    )
    counts = [int(pattern.match(line).group(1)) for line in lines]
    assert counts == sorted(counts) and counts[-1] == 6
    assert len(set(counts)) == len(counts), "the closing line repeats the last one"


def test_no_line_before_the_interval(monkeypatch):
    monkeypatch.setenv("AVFUSION_PROGRESS_SECONDS", "3600")
    out = io.StringIO()
    bar = progress(total=1000, desc="verify", unit="shards", file=out)
    bar.update(500)
    assert out.getvalue().splitlines() == [
        "verify: 0/1000 shards (0%) ? shards/s, elapsed 00:00, ETA ?"
    ]
    bar.update(500)
    bar.close()
    assert out.getvalue().splitlines()[-1].startswith("verify: 1000/1000 shards (100%)")


def test_terminal_gets_the_tqdm_bar():
    bar = progress(range(3), total=3, desc="synth", unit="video", file=_Tty())
    assert not isinstance(bar, LineProgress)
    bar.close()


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_bad_interval_is_named(monkeypatch, value):
    monkeypatch.setenv("AVFUSION_PROGRESS_SECONDS", value)
    with pytest.raises(ValueError, match="AVFUSION_PROGRESS_SECONDS: expected seconds > 0"):
        progress(total=1, desc="x", file=io.StringIO())
