"""`avfusion export` never runs code from a checkpoint and refuses state dicts that fit no model."""

from __future__ import annotations

import enum
import io
import os
import pickle
import subprocess
import types

import numpy as np
import pytest
import torch

from model import AVMAE, get_model_config
from model.keys import adapt_keys
from tests.support.procs import AVFUSION

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _tag_dir(tmp_path, states: dict):
    tag = tmp_path / "ckpt" / "step00000001"
    tag.mkdir(parents=True)
    (tmp_path / "ckpt" / "latest").write_text("step00000001")
    torch.save(states, tag / "mp_rank_00_model_states.pt")
    return tmp_path / "ckpt"


def _export_here(ckpt, out, capsys) -> tuple[int, str]:
    """`avfusion export` in this process (the console entry point's ``main``): (exit code,
    stderr). The crafted-pickle test runs the real command, start-up included."""
    from pipeline.cli import main

    capsys.readouterr()
    code = main(["export", str(ckpt), "--out", str(out)])
    return code, capsys.readouterr().err


def _export(ckpt, out):
    return subprocess.run(
        [*AVFUSION, "export", str(ckpt), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    module = AVMAE(get_model_config("debug")).state_dict()
    ckpt = _tag_dir(
        tmp_path,
        {"module": module, "config": {"model": {"preset": "debug"}}, "evil": _Payload(str(marker))},
    )
    proc = _export(ckpt, tmp_path / "out.safetensors")
    assert proc.returncode != 0
    assert not marker.exists(), "unpickling the checkpoint ran code"
    assert not (tmp_path / "out.safetensors").exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "refusing to unpickle" in lines[0]
    assert "Traceback" not in proc.stderr and "\x1b[" not in proc.stderr  # no colour codes
    assert "GLOBAL posix.system" in lines[0]  # what the restricted unpickler objected to


def test_empty_or_foreign_state_dict_is_refused(tmp_path, capsys):
    empty = _tag_dir(tmp_path / "a", {"module": {}, "config": {"model": {"preset": "debug"}}})
    code, err = _export_here(empty, tmp_path / "a.safetensors", capsys)
    assert code != 0 and "empty model state dict" in err
    foreign = _tag_dir(
        tmp_path / "b", {"module": {"w": torch.zeros(3)}, "config": {"model": {"preset": "debug"}}}
    )
    code, err = _export_here(foreign, tmp_path / "b.safetensors", capsys)
    assert code != 0 and "does not match model preset 'debug'" in err
    assert not (tmp_path / "a.safetensors").exists() and not (tmp_path / "b.safetensors").exists()
    assert len(err.strip().splitlines()) == 1


def test_export_of_a_plain_state_dict_with_rng_state(tmp_path, capsys):
    """A ZeRO-0 style file with numpy RNG state in its client state exports under the restricted loader."""
    import numpy as np

    module = AVMAE(get_model_config("debug")).state_dict()
    ckpt = _tag_dir(
        tmp_path,
        {
            "module": module,
            "config": {"model": {"preset": "debug"}},
            "step": 1,
            "rng": [{"numpy": np.random.get_state(), "torch": torch.get_rng_state()}],
        },
    )
    code, err = _export_here(ckpt, tmp_path / "ok.safetensors", capsys)
    assert code == 0, err
    from safetensors.torch import load_file

    out = load_file(tmp_path / "ok.safetensors")
    official = adapt_keys(module, "official")  # exports carry official names
    assert set(out) == set(official) and all(
        torch.equal(out[k], v.float()) for k, v in official.items()
    )


def test_unwritable_destination_is_one_line(tmp_path, capsys):
    module = AVMAE(get_model_config("debug")).state_dict()
    ckpt = _tag_dir(tmp_path, {"module": module, "config": {"model": {"preset": "debug"}}})
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "sub" / "out.safetensors"
    code, err = _export_here(ckpt, out, capsys)
    assert code != 0
    assert err.strip().startswith(f"error: {out}: cannot write the export (")
    assert len(err.strip().splitlines()) == 1


class _GetattrPickler(pickle.Pickler):
    """Pickles enum members as ``getattr(EnumClass, 'member')`` — what Python 3.11.2 writes for
    ``int``-mixin enums — and ``_Lookup`` objects as the ``getattr`` call they stand for."""

    def reducer_override(self, obj):
        if isinstance(obj, enum.Enum):
            return getattr, (type(obj), obj.name)
        if isinstance(obj, _Lookup):
            return getattr, (obj.owner, obj.name)
        return NotImplemented


class _Lookup:
    def __init__(self, owner, name):
        self.owner, self.name = owner, name


_PICKLE_AS_3_11_2 = types.SimpleNamespace(Pickler=_GetattrPickler, __name__="pickle")


def _load_restricted(path):
    from pipeline.engine.safeload import safe_torch_loads

    with safe_torch_loads():
        return torch.load(path, map_location="cpu", weights_only=True)


def test_enum_members_pickled_as_getattr_load(tmp_path):
    """#29: DeepSpeed's ZeroStageEnum in a ZeRO optimizer state, as Python 3.11.2 pickles it."""
    from deepspeed.runtime.zero.config import ZeroStageEnum

    path = tmp_path / "optim_states.pt"
    state = {"zero_stage": ZeroStageEnum.gradients, "w": torch.ones(2)}
    torch.save(state, path, pickle_module=_PICKLE_AS_3_11_2)
    raw = path.read_bytes()
    assert b"getattr" in raw and b"ZeroStageEnum" in raw  # the 3.11.2 form, not ZeroStageEnum(2)
    loaded = _load_restricted(path)
    assert loaded["zero_stage"] is ZeroStageEnum.gradients
    assert torch.equal(loaded["w"], torch.ones(2))


def test_getattr_on_anything_but_an_allowed_enum_member_is_refused(tmp_path):
    from deepspeed.runtime.zero.config import ZeroStageEnum

    marker = tmp_path / "pwned"
    for i, lookup in enumerate(
        (
            _Lookup(np.ndarray, "tofile"),  # an allowed class, but not an enum
            _Lookup(ZeroStageEnum, "__class__"),  # an allowed enum, but not a member
            _Lookup(ZeroStageEnum, "_missing_"),
        )
    ):
        path = tmp_path / f"evil{i}.pt"
        torch.save({"x": lookup}, path, pickle_module=_PICKLE_AS_3_11_2)
        with pytest.raises(pickle.UnpicklingError, match="getattr"):
            _load_restricted(path)
    # getattr(os, 'system')("touch pwned"), written by hand (os cannot be pickled directly)
    evil = (
        b"\x80\x02c__builtin__\ngetattr\nq\x00c__builtin__\n__import__\nX\x02\x00\x00\x00os"
        b"\x85RX\x06\x00\x00\x00system\x86R"
        + b"X"
        + len(f"touch {marker}").to_bytes(4, "little")
        + f"touch {marker}".encode()
        + b"\x85R."
    )
    with pytest.raises(pickle.UnpicklingError):
        from pipeline.engine.safeload import safe_torch_loads

        with safe_torch_loads():
            torch.serialization._weights_only_unpickler.load(io.BytesIO(evil))
    assert not marker.exists()
