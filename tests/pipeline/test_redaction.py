"""No command writes a credential it was given in a URL (#29.2–3): an ``s3://KEY:SECRET@bucket``
URL is refused up front, before any S3 client can quote it; log lines and errors.jsonl are
masked. The full pretraining → evaluation → export search is
tests/pipeline/test_run_artifacts.py::test_a_password_in_the_tracking_uri_is_in_no_artifact_of_the_run.
"""

from __future__ import annotations

import logging

import pytest

from pipeline.cli import main
from tests.pipeline.pretrain.test_run_artifacts import files_holding
from tests.pipeline.test_user_faults import never_joined
from tests.support.procs import REPO

SECRET = "Planted-s3cret-4410"
S3 = f"s3://AKIAPLANTED:{SECRET}@bucket/set"
MASKED = "s3://***@bucket/set"
DEBUG = str(REPO / "configs" / "debug.yaml")
LINEAR = str(REPO / "configs" / "eval" / "debug_linear.yaml")


def TRAIN(T: str) -> list[str]:
    return ["train", "--config", DEBUG, f"train.output_dir={T}/run", "tracking.enabled=false"]


def EVAL(T: str) -> list[str]:
    return [
        *("eval", "--config", LINEAR, "encoder.checkpoint=", "encoder.init=random"),
        "encoder.preset=debug",
        *(f"train.output_dir={T}/eval", "tracking.enabled=false"),
    ]


# command → arguments, given a scratch folder T and a local shard set S
COMMANDS = {
    "shards build: input": lambda T, S: ["shards", "build", S3, "--out", f"{T}/out"],
    "shards build: list entry": lambda T, S: [
        "shards",
        "build",
        f"{T}/list.txt",
        "--out",
        f"{T}/o",
    ],
    "shards build: --out": lambda T, S: ["shards", "build", f"{T}/list.txt", "--out", S3],
    "shards build: --classes": lambda T, S: [
        *("shards", "build", f"{T}/list.txt", "--out", f"{T}/o", "--classes", S3)
    ],
    "shards verify": lambda T, S: ["shards", "verify", S3],
    "shards inspect": lambda T, S: ["shards", "inspect", S3],
    "shards merge: part": lambda T, S: ["shards", "merge", S, S3, "--out", f"{T}/m"],
    "shards merge: --out": lambda T, S: ["shards", "merge", S, "--out", S3],
    "data bench": lambda T, S: ["data", "bench", S3],
    "train: data.shards": lambda T, S: [*TRAIN(T), f"data.shards={S3}"],
    "train: probe.shards": lambda T, S: [*TRAIN(T), f"data.shards={S}", f"probe.shards={S3}"],
    "eval: data.train": lambda T, S: [*EVAL(T), f"data.train={S3}", f"data.test={S}"],
    "eval: data.test": lambda T, S: [*EVAL(T), f"data.train={S}", f"data.test={S3}"],
}


@pytest.mark.parametrize("case", list(COMMANDS))
def test_credentials_in_an_s3_url_are_refused_in_one_masked_line(
    case, shard_set, tmp_path, capsys, caplog, monkeypatch
):
    monkeypatch.setattr("pipeline.engine.distributed.init_distributed", never_joined)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing may be contacted
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    (tmp_path / "list.txt").write_text(f"{S3}/a.mp4\n")
    code = main(COMMANDS[case](str(tmp_path), str(shard_set)))
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (case, code, out.err[-2000:])
    assert lines[0].startswith("error: " + MASKED) and "AWS_ACCESS_KEY_ID" in lines[0], lines[0]
    assert SECRET not in out.out + out.err + caplog.text
    assert files_holding(SECRET, tmp_path) == [str(tmp_path / "list.txt")]  # the input only


def test_log_lines_of_a_command_are_masked(caplog):
    """Whatever a library logs (a URL in a warning) reaches the handlers masked."""

    def command() -> int:
        logging.getLogger("avfusion.test").warning(
            "GET %s failed", f"https://u:{SECRET}@host/x?X-Amz-Signature={SECRET}"
        )
        return 0

    from avbase.errors import run_cli

    assert run_cli(command) == 0
    assert caplog.messages[-1] == "GET https://***@host/x?X-Amz-Signature=*** failed"
