"""``--dry-run``: the batch arithmetic a launch derives, without starting anything (#23.4).

The release's recipes fix the effective batch (16 per GPU × 4 GPUs × 8 accumulation steps =
512) and scale the learning rate from it (lr = blr · 512 / 256); ``train.effective_batch_size``
must keep both on any number of ranks.
"""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from tests.support.procs import REPO

CASES = [
    # config, world size, accumulation steps, lr (blr · 512 / 256)
    (REPO / "configs/eval/avsbench_s4.yaml", 1, 32, 4e-4),
    (REPO / "configs/eval/avsbench_s4.yaml", 4, 8, 4e-4),
    (REPO / "configs/eval/avsbench_s4.yaml", 32, 1, 4e-4),
    (REPO / "configs/eval/vggsound_music_separation.yaml", 1, 32, 6e-4),
    (REPO / "configs/eval/vggsound_music_separation.yaml", 4, 8, 6e-4),
    (REPO / "configs/eval/vggsound_music_separation.yaml", 32, 1, 6e-4),
]


def dry_run(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("config,world,accum,lr", CASES)
def test_release_recipes_keep_512_and_their_lr_on_any_world_size(capsys, config, world, accum, lr):
    out = dry_run(capsys, "eval", "--config", str(config), "--dry-run", "--world-size", str(world))
    derived = out["derived"]
    assert derived["world_size"] == world
    assert derived["accumulation_steps"] == accum
    assert derived["effective_batch_size"] == 16 * world * accum == 512
    assert derived["lr"] == pytest.approx(lr, rel=1e-12)
    # the shards are not there: said, not guessed
    assert derived["steps_per_epoch"] is None
    assert "manifest.json: not found" in derived["steps_per_epoch_unknown"]
    assert out["config"]["train"]["effective_batch_size"] == 512


def test_an_effective_batch_the_ranks_cannot_reach_is_one_line_and_exit_2(capsys):
    rc = main(["eval", "--config", str(CASES[0][0]), "--dry-run", "--world-size", "3"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "train.effective_batch_size: 512 is not a multiple of" in err
    assert "16 × 3" in err


@pytest.mark.parametrize(
    "world,effective,steps",
    [
        (1, None, 8),  # ceil(61 / 8) = 8 batches, 1 micro-batch per step
        (2, None, 4),  # ceil(ceil(61 / 2) / 8) = 4
        (2, 32, 2),  # 32 = 8 × 2 ranks × 2 accumulation steps: 4 batches → 2 steps
    ],
)
def test_train_dry_run_counts_steps_per_epoch_from_the_manifest(
    capsys, shard_set, world, effective, steps
):
    overrides = [f"data.shards={shard_set}", "data.remainder=pad"]
    if effective:
        overrides.append(f"train.effective_batch_size={effective}")
    out = dry_run(
        capsys,
        "train",
        "--config",
        str(REPO / "configs/debug.yaml"),
        *overrides,
        "--dry-run",
        "--world-size",
        str(world),
    )
    derived = out["derived"]
    assert derived["steps_per_epoch"] == steps
    assert derived["effective_batch_size"] == (effective or 8 * world)
    assert derived["lr"] == pytest.approx(out["config"]["optim"]["lr"])  # set, not scaled
