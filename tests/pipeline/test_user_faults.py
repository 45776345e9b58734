"""User faults are one ``error:`` line naming the file or key, exit status 2 — never an internal
error (#29.4–7). In this process (the console entry point's ``main``) where the fault allows."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open

from model import AVMAE, get_model_config
from pipeline.cli import main
from pipeline.engine.checkpoint import prune_checkpoints, tag_for, write_marker
from pipeline.engine.safeload import MODEL_STATES
from tests.support.procs import REPO


def checkpoint_root(root, steps=(1, 2), config=None):
    """A ZeRO-0 checkpoint root: one committed tag per step (weights offset by the step)."""
    module = AVMAE(get_model_config("debug")).state_dict()
    for step in steps:
        tag = root / tag_for(step)
        tag.mkdir(parents=True)
        states = {
            "module": {k: v + step if v.is_floating_point() else v for k, v in module.items()},
            "config": config or {"model": {"preset": "debug"}},
            "step": step,
        }
        torch.save(states, tag / MODEL_STATES[0])
        write_marker(tag)
    (root / "latest").write_text(tag_for(steps[-1]))
    return root


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def never_joined() -> None:
    """Stands in for ``init_distributed`` where a fault must be found before start-up."""
    raise AssertionError("the process group was joined: the fault was found after start-up")


def one_error_line(capsys) -> str:
    """The one ``error:`` line on stderr (torch may warn on its first import: not ours)."""
    lines = [x for x in capsys.readouterr().err.splitlines() if not re.match(r"W\d{4} ", x)]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("marker", [True, False], ids=["complete.json", "no complete.json"])
def test_export_of_a_truncated_newest_checkpoint_falls_back_naming_the_file(
    tmp_path, capsys, caplog, marker
):
    root = checkpoint_root(tmp_path / "ckpt")
    newest = root / tag_for(2) / MODEL_STATES[0]
    if not marker:  # written before markers: only torch can tell
        (root / tag_for(2) / "complete.json").unlink()
    truncate(newest)
    out = tmp_path / "model.safetensors"

    assert main(["export", str(root), "--out", str(out)]) == 0
    assert (
        f"{newest}: " in caplog.text and f"previous checkpoint, {root / tag_for(1)}" in caplog.text
    )
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["step"] == "1"
    capsys.readouterr()

    # the damaged tag asked for by name: one line naming its file, no fallback
    assert main(["export", str(root), "--tag", tag_for(2), "--out", str(out)]) == 2
    assert one_error_line(capsys).startswith(f"error: {newest}: ")


def test_pruning_counts_intact_checkpoints_and_removes_a_damaged_one(tmp_path, caplog):
    """After resume fell back past step 2 (cut short) and saved step 3, keep_last=2 keeps the
    checkpoints that load: 1 and 3."""
    root = checkpoint_root(tmp_path, steps=(1, 2, 3))
    truncate(root / tag_for(2) / MODEL_STATES[0])
    assert prune_checkpoints(root, keep_last=2) == [tag_for(2)]
    assert sorted(p.name for p in root.glob("step*")) == [tag_for(1), tag_for(3)]
    assert f"removing the damaged checkpoint {root / tag_for(2)}" in caplog.text


def test_verify_exits_2_on_a_missing_shard_and_names_a_stray_one(shard_set, tmp_path, capsys):
    """#29.5: a listed shard missing is unusable data (2, as `avfusion --help` says); #29.7: a
    shard file the manifest does not list is a problem line naming it."""
    import shutil

    copy = tmp_path / "set"
    shutil.copytree(shard_set, copy)
    shutil.copy(copy / "shard-000000.tar", copy / "shard-000099.tar")
    assert main(["shards", "verify", str(copy)]) == 2
    mismatches = [x for x in capsys.readouterr().out.splitlines() if x.startswith("MISMATCH")]
    assert mismatches == [
        "MISMATCH shard-000099.tar: a shard file that manifest.json does not list "
        "(left by another build?)"
    ]
    (copy / "shard-000099.tar").unlink()
    (copy / "shard-000001.tar").unlink()
    assert main(["shards", "verify", str(copy)]) == 2
    out = capsys.readouterr().out
    assert "MISMATCH shard-000001.tar: unreadable (FileNotFoundError" in out


def test_resuming_with_another_model_names_both_before_any_checkpoint_is_skipped(
    shard_set, tmp_path, capsys, caplog, monkeypatch
):
    """#29.4a: a debug run's checkpoints, resumed with ``model.fusion_arch=token``: one line
    naming the checkpoint, what wrote it and what the config asks for — not "skipping" each
    intact checkpoint and an internal error; before any process group is joined."""
    from pipeline.config import load_config, to_dict
    from pipeline.train import main as train_main

    monkeypatch.setattr("pipeline.engine.distributed.init_distributed", never_joined)

    run = tmp_path / "run"
    args = [
        *(
            "--config",
            str(REPO / "configs" / "debug.yaml"),
            f"data.shards={shard_set}",
            "probe.shards=",
        ),
        *(f"train.output_dir={run}", "data.batch_size=4", "tracking.enabled=false"),
    ]
    written = to_dict(load_config(args[1], args[2:]))
    checkpoint_root(run / "checkpoints", config=written)

    assert train_main([*args, "model.fusion_arch=token"]) == 2
    line = one_error_line(capsys)
    assert line == (
        f"error: train.resume: {run / 'checkpoints' / tag_for(2)} was written by model preset "
        "'debug' with fusion_arch='factorized_mmi'; the config asks for preset 'debug' with "
        "fusion_arch='token'; resume with the same model.* settings, or start a new run "
        "(another train.output_dir, or train.resume=never)"
    )
    assert "skipping" not in caplog.text


def test_a_rendezvous_port_in_use_is_one_line_saying_how_to_choose_another(capsys, monkeypatch):
    """#29.4c: the demo's port held by another process (DistNetworkError EADDRINUSE)."""
    import socket

    import torch.distributed as dist

    from avbase.errors import run_cli
    from pipeline.engine.distributed import process_group

    def join() -> int:
        with process_group():
            return 0

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
        for k, v in (env | {"MASTER_PORT": str(port)}).items():
            monkeypatch.setenv(k, v)
        assert run_cli(join) == 2
    assert one_error_line(capsys) == (
        f"error: MASTER_PORT {port}: the port is in use on 127.0.0.1 (another job, or one "
        "still ending); choose a free one: make demo DEMO_PORT=<port>, deepspeed --master_port "
        "<port>, torchrun --master-port <port>, or MASTER_PORT=<port>"
    )
    assert not dist.is_initialized()


@pytest.fixture
def s3_env(monkeypatch):
    """Short S3 timeouts and retries for a local endpoint; returns a function setting it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AVFUSION_S3_CONNECT_TIMEOUT", "0.5")
    monkeypatch.setenv("AVFUSION_S3_READ_TIMEOUT", "0.5")
    monkeypatch.setattr("pipeline.data.shardio.S3_TIMEOUTS", (0.5, 0.5))

    def at(port: int, retries: int) -> str:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", str(retries))
        return f"http://127.0.0.1:{port}"

    return at


REFUSED = {
    "shards build: input": lambda T: ["shards", "build", "s3://b/videos", "--out", f"{T}/o"],
    "shards build: --out": lambda T: ["shards", "build", f"{T}/list.txt", "--out", "s3://b/o"],
    "shards verify": lambda T: ["shards", "verify", "s3://b/set"],
    "shards inspect": lambda T: ["shards", "inspect", "s3://b/set"],
    "data bench": lambda T: ["data", "bench", "s3://b/set"],
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_s3_endpoint_is_one_line_naming_it(case, s3_env, tmp_path, capsys):
    """#29.4d: not ``internal error (EndpointConnectionError …)``."""
    from tests.support.procs import free_port

    endpoint = s3_env(free_port(), retries=0)  # nothing listens there
    (tmp_path / "list.txt").write_text("a.mp4\n")
    assert main(REFUSED[case](str(tmp_path))) == 2
    line = one_error_line(capsys)
    assert "s3://b/" in line and f"{endpoint}" in line, line
    assert "internal error" not in line


@pytest.fixture
def stalled_endpoint():
    """A local endpoint that accepts connections and never answers."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed at the end of the test
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in held:
        conn.close()


STALLED = {
    "shards build: --out": lambda T: ["shards", "build", f"{T}/list.txt", "--out", "s3://b/o"],
    "shards build: input": lambda T: ["shards", "build", "s3://b/videos", "--out", f"{T}/o"],
    "data bench": lambda T: ["data", "bench", "s3://b/set"],
}


@pytest.mark.parametrize("case", list(STALLED))
def test_a_stalled_s3_endpoint_is_reported_while_it_is_retried(
    case, s3_env, stalled_endpoint, tmp_path, capsys, caplog, monkeypatch
):
    """#29.7: a line naming the endpoint as soon as a call has waited ``WARN_AFTER_S`` (here
    0.2 s), then the retries run out as before and one error line ends the command."""
    import time

    monkeypatch.setattr("avbase.endpoint.WARN_AFTER_S", 0.2)
    endpoint = s3_env(stalled_endpoint, retries=1)  # two tries of 0.5 s each
    (tmp_path / "list.txt").write_text("a.mp4\n")
    start = time.time()
    assert main(STALLED[case](str(tmp_path))) == 2
    took = time.time() - start
    line = one_error_line(capsys)
    assert endpoint in line and "s3://b/" in line, line
    (warning,) = [r for r in caplog.records if "no answer from the S3 endpoint" in r.message]
    assert warning.message.startswith("s3://b/" if "input" not in case else "input s3://b/")
    assert f"endpoint {endpoint} yet; still trying (" in warning.message
    assert took - (warning.created - start) > 0.5  # said while the tries went on
