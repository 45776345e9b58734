"""User faults are one ``error:`` line naming the file or key, exit status 2 — never an internal
error (#29.4–7). In this process (the console entry point's ``main``) where the fault allows."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from model import AVMAE, get_model_config
from pipeline.checkpoint import prune_checkpoints, tag_for, write_marker
from pipeline.cli import main
from pipeline.export import MODEL_STATES
from tests.pipeline.helpers import REPO


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


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
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
    shard_set, tmp_path, capsys, caplog
):
    """#29.4a: a debug run's checkpoints, resumed with ``model.fusion_arch=token``: one line
    naming the checkpoint, what wrote it and what the config asks for — not "skipping" each
    intact checkpoint and an internal error; before any process group is joined."""
    import torch.distributed as dist

    from pipeline.config import load_config, to_dict
    from pipeline.train import main as train_main

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
    assert "skipping" not in caplog.text and not dist.is_initialized()
