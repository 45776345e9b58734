"""Bad input gives one ``error:`` line, a non-zero exit and no traceback — for every command."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.procs import AVFUSION, REPO

DEBUG_YAML = str(REPO / "configs/debug.yaml")
# case → arguments, given a folder that does not exist (M), a scratch folder (T) and a shard set (S)
CASES = {
    "probe: missing weights": lambda M, T, S: ["probe", f"{M}/w.safetensors", "--shards", S],
    "probe: unknown preset": lambda M, T, S: [
        "probe",
        f"{M}/w.safetensors",
        "--shards",
        S,
        "--preset",
        "nope",
    ],
    "export: not a checkpoint": lambda M, T, S: ["export", M, "--out", f"{T}/x.safetensors"],
    "train: missing config": lambda M, T, S: ["train", "--config", f"{M}/run.yaml"],
    "train: wrong type": lambda M, T, S: ["train", "--config", DEBUG_YAML, "data.batch_size=many"],
    "train: unknown key": lambda M, T, S: ["train", "--config", DEBUG_YAML, "optim.lr_typo=1"],
    "train: missing shards": lambda M, T, S: [
        "train",
        "--config",
        DEBUG_YAML,
        f"data.shards={M}",
        "tracking.enabled=false",
        f"train.output_dir={T}/run",
    ],
    "shards verify: not a shard set": lambda M, T, S: ["shards", "verify", M],
    "shards inspect: not a shard set": lambda M, T, S: ["shards", "inspect", M],
    "shards build: missing input": lambda M, T, S: [
        "shards",
        "build",
        f"{M}/a.mp4",
        "--out",
        f"{T}/out",
    ],
    "data bench: not a shard set": lambda M, T, S: ["data", "bench", M],
    "model parity: missing fixture": lambda M, T, S: ["model", "parity", f"{M}/f.pt"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line(case, tmp_path, shard_set, capsys, monkeypatch):
    """In this process (the console entry point's ``main``): the same code path, without a
    Python start-up per case."""
    import sys

    from pipeline.cli import main

    monkeypatch.setenv("AVFUSION_DEBUG", "")
    args = CASES[case](str(tmp_path / "missing"), str(tmp_path), str(shard_set))
    try:
        code = main(args)
    except SystemExit as e:  # what the interpreter would do with it
        code = e.code if isinstance(e.code, int) else 1
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    out = capsys.readouterr()
    assert code == 2, (case, code, out.err[-2000:])  # avfusion --help: 2 = unusable input
    errors = [line for line in out.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, (case, out.err[-2000:])
    assert "Traceback" not in out.err + out.out, (case, out.err[-2000:])


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run(
        [*AVFUSION, "--debug", "probe", str(tmp_path / "w.safetensors"), "--shards", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_internal_errors_are_one_line_with_the_hint(capsys):
    from avbase.errors import EXIT_INTERNAL, run_cli

    def buggy():
        raise KeyError("oops")

    assert run_cli(buggy) == EXIT_INTERNAL
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: internal error (KeyError: 'oops'); rerun with AVFUSION_DEBUG=1 for the traceback"
    ]
