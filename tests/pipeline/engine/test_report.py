"""The training run's log lines: banner, ETA, rate-limited data errors, summary."""

from __future__ import annotations

import logging

from pipeline.engine import report
from pipeline.engine.report import RunReport, duration


def test_eta_counts_from_this_process_start(monkeypatch):
    clock = iter([100.0, 130.0])
    monkeypatch.setattr(report.time, "monotonic", lambda: next(clock))
    r = RunReport(total_steps=100, start_step=40)
    # 10 steps in 30 s → 50 steps left take 150 s
    assert r.eta(50) == "50/100 (50%) ETA 0:02:30"


def test_eta_before_any_step_is_unknown():
    assert RunReport(total_steps=8, start_step=0).eta(0) == "0/8 (0%) ETA ?"


def test_data_errors_are_reported_once_a_minute_and_only_when_new(monkeypatch, caplog):
    now = [0.0]
    monkeypatch.setattr(report.time, "monotonic", lambda: now[0])
    r = RunReport(total_steps=10, start_step=0)
    with caplog.at_level(logging.WARNING, logger="avfusion.train"):
        r.data_errors(0, {})  # nothing skipped: silent
        r.data_errors(3, {"image": 2, "audio": 1})
        now[0] = 30.0
        r.data_errors(5, {"image": 4, "audio": 1})  # within the minute: silent
        now[0] = 90.0
        r.data_errors(5, {"image": 4, "audio": 1})  # a minute on: says the new total
        now[0] = 200.0
        r.data_errors(5, {"image": 4, "audio": 1})  # nothing new: silent
    lines = [rec.getMessage() for rec in caplog.records]
    assert lines == [
        "data: 3 samples skipped so far (this rank: audio 1, image 2); see data/errors in the metrics",
        "data: 5 samples skipped so far (this rank: audio 1, image 4); see data/errors in the metrics",
    ]


def test_banner_and_summary_name_the_numbers(caplog):
    r = RunReport(total_steps=60, start_step=0)
    with caplog.at_level(logging.INFO, logger="avfusion.train"):
        r.banner(
            samples=96,
            steps_per_epoch=6,
            epochs=10,
            batch=8,
            world=2,
            accum=1,
            output_dir="out",
            tracking="sqlite:///m.db",
        )
        r.summary(60, 10.0, 960, {"train/loss": 1.23456}, "out")
    banner, summary = (rec.getMessage() for rec in caplog.records)
    assert banner == (
        "training: 96 samples, 6 steps/epoch × 10 epochs, 60 steps; effective batch 16 "
        "(8 per rank × 2 ranks × 1 accumulation); output out; tracking sqlite:///m.db"
    )
    assert summary.startswith("finished: step 60, epoch 10.00, ") and "last loss 1.2346" in summary
    assert summary.endswith("checkpoints in out/checkpoints")


def test_duration():
    assert duration(3725.2) == "1:02:05" and duration(-1) == "0:00:00"


def test_banner_says_when_max_steps_stops_early(caplog):
    with caplog.at_level(logging.INFO, logger="avfusion.train"):
        RunReport(total_steps=6, start_step=2).banner(
            samples=24,
            steps_per_epoch=6,
            epochs=30,
            batch=4,
            world=1,
            accum=1,
            output_dir="o",
            tracking="off",
        )
    assert (
        "6 steps/epoch × 30 epochs, 6 steps, stopping at train.max_steps, resuming at step 2;"
        in caplog.text
    )
