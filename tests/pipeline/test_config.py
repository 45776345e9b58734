"""Config tree: YAML + overrides → typed dataclasses; errors name the key."""

import re
from pathlib import Path

import pytest

from pipeline.config import Config, ConfigError, ShardSource, from_dict, load_config, to_dict

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["debug", "vggsound", "as2m"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert isinstance(cfg, Config)
    assert cfg.model.preset == name


def test_recipe_numbers():
    vgg = load_config(REPO / "configs" / "vggsound.yaml")
    as2m = load_config(REPO / "configs" / "as2m.yaml")
    assert (vgg.train.effective_batch_size, as2m.train.effective_batch_size) == (512, 2048)
    assert vgg.optim.betas == (0.9, 0.95) and vgg.optim.weight_decay == 0.05
    assert (vgg.optim.epochs, vgg.optim.warmup_epochs, vgg.optim.blr) == (200, 40.0, 1.5e-4)


def test_overrides_are_typed():
    cfg = load_config(
        REPO / "configs" / "debug.yaml",
        [
            "train.max_steps=7",
            "optim.betas=[0.8, 0.9]",
            "model.fusion_arch=token",
            "optim.epochs=3",
            "optim.warmup_epochs=1",
            "optim.lr=1e-3",
        ],
    )
    assert cfg.train.max_steps == 7
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.model.architecture().fusion_arch == "token"
    assert cfg.optim.lr == 1e-3  # YAML 1.1 reads "1e-3" as a string; float fields accept it
    assert to_dict(cfg)["optim"]["betas"] == [0.8, 0.9]


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.max_stepz=3", "train.max_stepz"),
        ("data.batch_size=abc", "data.batch_size"),
        ("optim.lr=fast", "optim.lr"),
        ("nosection.x=1", "nosection"),
        ("train.precision=fp8", "train.precision"),
        ("data.batch_size=0", "data.batch_size"),
        ("model.image_mask_ratio=1.5", "model.image_mask_ratio"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("train.zero_stage=true", "train.zero_stage"),
        ("model.fusion_arch=cross", "model.fusion_arch"),  # AVMAEConfig's own check
        ("model.fusion_arch=3", "model.fusion_arch"),  # AVMAEConfig's field type
        ("model.widht=3", "model.widht"),
        ("model.image={sizes: 3}", "model.image.sizes"),
        ("model.preset=vit", "model.preset"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(REPO / "configs" / "debug.yaml", [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_generated_deepspeed_config():
    """The vggsound recipe on 4 × 8 GPUs: 512 = 16 per GPU × 32 ranks × 1; on 8 GPUs: accumulation 4."""
    from pipeline.engine.distributed import deepspeed_config

    cfg = load_config(
        REPO / "configs" / "vggsound.yaml", ["data.batch_size=16", "train.precision=bf16"]
    )
    ds = deepspeed_config(cfg.engine_spec(), world_size=32)
    assert (
        ds["train_micro_batch_size_per_gpu"],
        ds["gradient_accumulation_steps"],
        ds["train_batch_size"],
    ) == (16, 1, 512)
    assert deepspeed_config(cfg.engine_spec(), world_size=8)["gradient_accumulation_steps"] == 4
    assert (
        ds["torch_autocast"]["enabled"] and not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    )
    assert (
        ds["zero_optimization"]["stage"] == cfg.train.zero_stage and ds["gradient_clipping"] == 0.0
    )
    fp16 = deepspeed_config(
        load_config(
            REPO / "configs" / "vggsound.yaml",
            ["data.batch_size=16", "train.precision=fp16", "optim.grad_clip=1.0"],
        ).engine_spec(),
        32,
    )
    assert (
        fp16["fp16"]["loss_scale"] == 0
        and fp16["gradient_clipping"] == 1.0
        and not fp16["bf16"]["enabled"]
    )
    with pytest.raises(ValueError, match="train.effective_batch_size: 512 is not a multiple"):
        deepspeed_config(cfg.engine_spec(), world_size=3)


def test_model_section_is_a_preset_plus_avmae_config_fields():
    """Every AVMAEConfig field is a ``model.<field>`` key; the dump holds the resolved model."""
    import dataclasses

    from model import AVMAEConfig, get_model_config
    from pipeline.pretrain.trainer import build_model

    for f in dataclasses.fields(AVMAEConfig):  # a new field needs no pipeline edit
        assert f.name in to_dict(load_config(REPO / "configs" / "debug.yaml"))["model"]
    cfg = load_config(
        REPO / "configs" / "debug.yaml",
        ["model.decoder_depth=2", "model.image_size=96", "model.image={mean: [0.5, 0.5, 0.5]}"],
    )
    arch = cfg.model.architecture()
    assert arch == get_model_config(
        "debug",
        decoder_depth=2,
        image_size=96,
        image=dataclasses.replace(arch.image, mean=(0.5, 0.5, 0.5)),
    )
    assert arch.image.size == 96 and arch.image.std == get_model_config("debug").image.std
    dumped = to_dict(cfg)
    assert dumped["model"]["decoder_depth"] == 2 and dumped["model"]["preset"] == "debug"
    assert load_config(None, [f"model={dumped['model']}"]).model.architecture() == arch
    model, pretrained = build_model(cfg)
    assert model.config == arch and len(model.image_decoder.blocks) == 2 and pretrained == {}


@pytest.mark.parametrize("steps", ["0", "-1"])
def test_max_steps_that_train_nothing_are_refused(steps):
    with pytest.raises(ConfigError, match=f"train.max_steps: must be > 0, got {steps}"):
        load_config(REPO / "configs" / "debug.yaml", [f"train.max_steps={steps}"])


def test_shards_take_one_path_or_a_mixture_list():
    one = load_config(None, ["data.shards=s3://b/vggsound"])
    assert one.data.shards == "s3://b/vggsound"  # unchanged: a plain string
    assert [s.path for s in one.data.sources()] == ["s3://b/vggsound"]
    mix = load_config(
        None,
        [
            "data.shards=[{path: s3://b/as2m, weight: 3}, {path: /d/vgg, weight: 1}]",
            "data.repeat=2",
        ],
    )
    assert isinstance(mix.data.shards[1], ShardSource) and mix.data.shards[1].weight == 1.0
    assert mix.data.repeat == 2.0
    tree = to_dict(mix)  # the plain form in checkpoints and MLflow reloads to the same config
    assert tree["data"]["shards"][1] == {"path": "/d/vgg", "weight": 1.0, "repeat": None}
    assert from_dict(Config, tree).data == mix.data


@pytest.mark.parametrize(
    "shards, message",
    [
        ("[/a, {path: /b, weight: x}]", "data.shards[1].weight: expected float, got 'x'"),
        ("[/a, {path: /b, wieght: 1}]", "data.shards[1].wieght: unknown key"),
        ("[{path: /a, weight: 2}, /b]", "data.shards[1].weight: missing; give every set a weight"),
        ("[{path: /a, weight: 1, repeat: 2}]", "data.shards[0]: give weight or repeat, not both"),
        ("[{path: /a, repeat: 0}]", "data.shards[0].repeat: must be > 0, got 0.0"),
        ("[/a, 5]", "data.shards[1]: expected str or a mapping, got 5"),
        ("[{weight: 1}]", "data.shards[0].path: empty"),
        ("[/a, /a]", "data.shards[1].path: '/a' is listed twice"),
        ("[]", "data.shards: empty list"),
        ("{path: /a}", "data.shards: expected str or list, got"),
    ],
)
def test_mixture_items_are_checked_by_key(shards, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [f"data.shards={shards}"])
