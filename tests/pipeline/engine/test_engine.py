"""The DeepSpeed engine as the trainer builds it (one CPU process, gloo): the values the recipe
depends on, the bf16 path, the sync-free step and its non-finite stop, the checkpoint guard, and
the single-rank failure paths of ``Engine.fit`` as a command reports them (a non-finite loss, a
write limit during a save; tests/pipeline/pretrain/test_train.py launches the multi-rank ones).
One process group for the module: DeepSpeed keeps a clone of the first one's world group."""

from __future__ import annotations

import re
import resource

import pytest
import torch

from avbase.errors import EXIT_USAGE, run_cli
from pipeline.config import load_config
from pipeline.engine.checkpoint import Checkpointer, NonFiniteWeights, verify_marker
from pipeline.engine.distributed import DistInfo, build_engine, deepspeed_config
from pipeline.engine.loop import Engine, compile_blocks
from pipeline.engine.output import RunFolder
from pipeline.engine.step import NonFiniteLoss, TrainStep
from pipeline.pretrain.trainer import Pretraining
from tests.support.hostreads import HostReadCounter
from tests.support.procs import REPO, free_port

SHIPPED = ("debug", "vggsound", "as2m")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def process_group():
    import torch.distributed as dist

    from pipeline.engine.distributed import init_distributed

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "DS_ACCELERATOR": "cpu",
        }.items():
            mp.setenv(key, value)
        init_distributed()
        yield
        dist.destroy_process_group()


INFO = DistInfo(0, 1, 0, CPU)


def engine_for(cfg, compiled: bool = False):
    """(DeepSpeed engine, pretraining task) as the engine loop builds them for ``cfg``."""
    torch.manual_seed(0)
    task = Pretraining(cfg, INFO)
    model = task.model()
    if compiled:
        compile_blocks(model, cfg.train.compile_mode)
    optimizer = task.optimizer(model, 1e-3)
    return build_engine(model, optimizer, cfg.engine_spec(), 1)[0], task


def steps_of(engine, task, accum: int = 1) -> TrainStep:
    return TrainStep(
        engine, task.step, task.losses, seed=0, accum=accum, rank=0, world_size=1, device=CPU
    )


def debug_cfg(*overrides: str):
    return load_config(REPO / "configs" / "debug.yaml", ["data.batch_size=2", *overrides])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_engine_honours_the_recipe(process_group, name):
    """DeepSpeed 0.19 defaults gradient_clipping to 1.0 and a synchronising throughput timer;
    the engine built from each shipped config has the recipe's values instead."""
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = load_config(REPO / "configs" / f"{name}.yaml", ["model.preset=debug"])
    parsed = DeepSpeedConfig(deepspeed_config(cfg.engine_spec(), 1))
    assert parsed.gradient_clipping == cfg.optim.grad_clip == 0.0
    assert not parsed.prescale_gradients and parsed.gradient_predivide_factor == 1.0
    assert not parsed.timers_config.enabled and not parsed.timers_config.synchronized
    assert not parsed.bfloat16_config.enabled
    if (
        cfg.train.precision == "fp16"
    ):  # GradScaler's constants: 2**16, halve at once, double after 2000
        fp16 = parsed.float16_config
        assert (
            fp16.enabled,
            fp16.loss_scale,
            fp16.initial_scale_power,
            fp16.hysteresis,
            fp16.loss_scale_window,
        ) == (True, 0, 16, 1, 2000)
        cfg = load_config(
            REPO / "configs" / f"{name}.yaml", ["model.preset=debug", "train.precision=fp32"]
        )
    engine, _ = engine_for(cfg)  # fp16 has no CPU kernels: the engine is built in fp32 there
    assert engine.gradient_clipping() == 0.0
    assert not engine.tput_timer.config.enabled and not engine.wall_clock_breakdown()


@pytest.mark.parametrize("stage", [0, 2])
def test_bf16_is_autocast_over_fp32_master_weights(process_group, stage):
    cfg = debug_cfg("train.precision=bf16", f"train.zero_stage={stage}")
    engine, task = engine_for(cfg)
    if stage == 0:  # no DeepSpeed wrapper: our AdamW steps the fp32 parameters directly
        assert isinstance(engine.optimizer, torch.optim.AdamW)
    seen = []
    linear = next(m for m in engine.module.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    assert task.dtype == torch.float32  # inputs stay fp32; autocast casts inside the matmuls
    steps_of(engine, task).micro(batch(engine.module), 0, 0)
    assert seen == [torch.bfloat16]
    params = dict(engine.module.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    assert sum(not torch.equal(before[n], p) for n, p in params.items()) > len(params) // 2


def batch(model, n: int = 2, fill: float | None = None) -> dict:
    cfg = model.config
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=gen)
    if fill is not None:
        image[1] = fill
    return {
        "image": image,
        "audio": torch.randn(n, 1, *cfg.audio_size, generator=gen),
        "key": [f"key{i}" for i in range(n)],
    }


@pytest.mark.parametrize("stage", [0, 2])
def test_step_reads_nothing_back_and_totals_are_the_losses(process_group, stage):
    engine, task = engine_for(debug_cfg(f"train.zero_stage={stage}"))
    step, outs = steps_of(engine, task, accum=2), []
    with HostReadCounter() as counter:
        for micro in range(2):
            step.micro(batch(engine.module), 0, micro)
            outs.append(task.last[1])
    assert counter.count == 0
    image, audio, bad, data_s, errors = step.totals(errors=3, epoch=0)
    assert image == pytest.approx(sum(o.loss_image.item() for o in outs), rel=1e-12)
    assert audio == pytest.approx(sum(o.loss_audio.item() for o in outs), rel=1e-12)
    assert (bad, data_s, errors) == (0, 0.0, 3)


def test_non_finite_loss_names_steps_and_keys(process_group):
    engine, task = engine_for(debug_cfg("train.zero_stage=0"))
    step = steps_of(engine, task)
    step.micro(batch(engine.module), 4, 0)
    step.micro(batch(engine.module, fill=float("nan")), 5, 0)
    step.micro(batch(engine.module), 6, 0)  # the window keeps counting after the bad step
    with pytest.raises(
        NonFiniteLoss, match=r"at steps 5–7 \(epoch 2\) on rank 0; batch keys: \['key0'"
    ):
        step.totals(errors=0, epoch=2)


def test_checkpoint_refuses_non_finite_weights(process_group, tmp_path):
    engine, _ = engine_for(debug_cfg("train.zero_stage=2"))
    with torch.no_grad():
        next(engine.module.parameters())[0] = float("inf")
    with pytest.raises(NonFiniteWeights, match="after step 3: no checkpoint written"):
        Checkpointer(engine, tmp_path, keep_last=2, rank=0, world_size=1).save(
            3, {}, loader=None, run_id=None
        )
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(process_group, monkeypatch):
    """train.compile: regionally compiled blocks under a ZeRO-2 engine give the eager losses."""
    # NOTE: scalar C++ kernels: the vectorised ones took 72 of this test's 98 s to compile on a
    # fresh 2-core machine (12 graphs; 41 s scalar). The wiring under test (every block compiled
    # in place, DeepSpeed's hooks eager, keys unchanged) is the same; GPUs compile Triton.
    monkeypatch.setattr("torch._inductor.config.cpp.vec_isa_ok", False)
    from torch._dynamo.utils import counters

    counters.clear()
    curves = []
    for compiled in (False, True):
        cfg = debug_cfg("train.zero_stage=2", f"train.compile={str(compiled).lower()}")
        engine, task = engine_for(cfg, compiled)
        step = steps_of(engine, task)
        curves.append([step.micro(batch(engine.module), s, 0).item() for s in range(3)])
    assert curves[1] == pytest.approx(curves[0], rel=1e-4)
    assert curves[0][2] != curves[0][0]  # the weights moved between the compared steps
    assert counters["stats"]["unique_graphs"] > 0  # the compiled run did run compiled blocks


def test_resume_names_a_truncated_checkpoint_and_falls_back(
    process_group, shard_set, tmp_path, caplog
):
    """#14.3: the newest checkpoint's model file is cut short → a warning naming it, and the
    older complete checkpoint is loaded (weights and counters of step 1)."""
    from avbase.features import get_frontend
    from pipeline.config import DataConfig
    from pipeline.data.loader import build_loader
    from pipeline.engine.checkpoint import resume_candidates
    from pipeline.engine.safeload import model_states_file

    engine, task = engine_for(debug_cfg("train.zero_stage=0"))
    mcfg = engine.module.config
    loader = build_loader(
        DataConfig(shards=str(shard_set), batch_size=2, workers=0),
        audio=get_frontend(mcfg.audio_frontend),
        image=mcfg.image,
        rank=0,
        world_size=1,
        seed=0,
        train=True,
    )
    ck = Checkpointer(engine, tmp_path, keep_last=5, rank=0, world_size=1)
    state = {"step": 1, "epoch": 0, "epoch_start": 0, "samples_seen": 2}
    ck.save(1, state, loader, run_id="run-a")
    at_step1 = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    steps_of(engine, task).micro(batch(engine.module), 1, 0)
    ck.save(2, state | {"step": 2, "samples_seen": 4}, loader, run_id="run-a")
    states = model_states_file(tmp_path / "step00000002")
    states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])

    candidates = resume_candidates("auto", tmp_path)
    assert candidates == [tmp_path / "step00000002", tmp_path / "step00000001"]
    assert resume_candidates(str(tmp_path / "step00000001"), tmp_path) == [
        tmp_path / "step00000001"
    ]
    with caplog.at_level("WARNING", logger="avfusion.checkpoint"):
        loaded = ck.load(candidates, loader)
    assert (loaded["step"], loaded["samples_seen"], loaded["mlflow_run_id"]) == (1, 2, "run-a")
    assert str(states) in caplog.text and "expected" in caplog.text
    for name, p in engine.module.named_parameters():
        assert torch.equal(p, at_step1[name]), name


def engine_on(shard_set, out, *overrides: str) -> Engine:
    """The pretraining engine of configs/debug.yaml (batch 2) as ``pretrain()`` builds it."""
    cfg = debug_cfg(
        f"data.shards={shard_set}",
        "data.workers=0",
        f"train.output_dir={out}",
        "tracking.enabled=false",
        "probe.shards=null",
        *overrides,
    )
    folder = RunFolder(out, {}, cfg.tracking, INFO, {})
    return Engine(cfg.engine_spec(), INFO, Pretraining(cfg, INFO), folder)


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]


def test_sigterm_during_a_save_waits_for_it_then_stops_with_both_checkpoints_intact(
    process_group, shard_set, tmp_path, caplog
):
    """#27.1: two SIGTERMs arrive while step 2's checkpoint is being written: the save completes
    (marker written), the second signal is logged and ignored, the run stops at that boundary
    with Preempted (exit 143), and step 1's checkpoint still verifies."""
    import os
    import signal

    from avbase.errors import EXIT_PREEMPTED

    engine = engine_on(shard_set, tmp_path, "train.save_every_steps=1", "train.zero_stage=0")
    save = engine.checkpoints.save

    def interrupted_save(step, *args, **kwargs):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        save(step, *args, **kwargs)

    engine.checkpoints.save = interrupted_save
    with caplog.at_level("WARNING", logger="avfusion.train"):
        assert run_cli(engine.fit) == EXIT_PREEMPTED
    assert "already stopping" in caplog.text
    assert engine.progress.step == 2
    for step in (1, 2):
        verify_marker(tmp_path / "checkpoints" / f"step{step:08d}")
        assert (tmp_path / "checkpoints" / f"step{step:08d}" / "complete.json").is_file()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step00000002"
    # after a stop the handler stays (a launcher's SIGTERM must not cut the exit short)
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_a_non_finite_loss_is_one_line_naming_the_step_and_the_batch(
    process_group, shard_set, tmp_path, capsys
):
    engine = engine_on(
        shard_set, tmp_path, "optim.lr=1e30", "optim.warmup_epochs=0", "train.log_every=1"
    )
    assert run_cli(engine.fit) == EXIT_USAGE
    (line,) = error_lines(capsys)
    assert re.match(r"error: non-finite loss \(.*\) at step \d+ \(epoch 0\) on rank 0; ", line)
    assert re.search(r"; batch keys: \['\w+", line), line
    assert not (tmp_path / "checkpoints" / "latest").exists()  # nothing saved after it


def test_a_write_limit_during_a_checkpoint_save_keeps_the_last_one(
    process_group, shard_set, tmp_path, capsys
):
    """#14.7: ``ulimit -f`` hit while saving (RLIMIT_FSIZE of this process: Python ignores
    SIGXFSZ, so a write past it fails with EFBIG): one line naming the step's folder and the
    kept checkpoint; the unfinished folder is gone and the earlier checkpoint still verifies."""
    first = engine_on(shard_set, tmp_path, "train.max_steps=4", "train.save_every_steps=4")
    first.fit()
    first.folder.close("FINISHED")
    checkpoints = tmp_path / "checkpoints"
    kept = checkpoints / "step00000004"
    largest = max(f.stat().st_size for f in kept.iterdir())
    resumed = engine_on(shard_set, tmp_path, "train.max_steps=8", "train.save_every_steps=4")
    assert resumed.progress.step == 4
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest // 2, hard))
    try:
        code = run_cli(resumed.fit)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert code == EXIT_USAGE
    (line,) = error_lines(capsys)
    assert line.startswith(f"error: {checkpoints}/step00000008: checkpoint not written ("), line
    assert line.endswith("; the newest complete one, step00000004, is intact"), line
    assert [p.name for p in checkpoints.glob("step*")] == [kept.name]
    assert (checkpoints / "latest").read_text().strip() == kept.name
    verify_marker(kept)
