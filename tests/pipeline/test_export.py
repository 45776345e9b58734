"""`avfusion export` never runs code from a checkpoint and refuses state dicts that fit no model."""

from __future__ import annotations

import os
import subprocess

import torch

from model import AVMAE, get_model_config
from model.checkpoints import adapt_keys
from tests.pipeline.helpers import AVFUSION

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
    assert "Traceback" not in proc.stderr


def test_empty_or_foreign_state_dict_is_refused(tmp_path):
    empty = _tag_dir(tmp_path / "a", {"module": {}, "config": {"model": {"preset": "debug"}}})
    proc = _export(empty, tmp_path / "a.safetensors")
    assert proc.returncode != 0 and "empty model state dict" in proc.stderr
    foreign = _tag_dir(
        tmp_path / "b", {"module": {"w": torch.zeros(3)}, "config": {"model": {"preset": "debug"}}}
    )
    proc = _export(foreign, tmp_path / "b.safetensors")
    assert proc.returncode != 0 and "does not match model preset 'debug'" in proc.stderr
    assert not (tmp_path / "a.safetensors").exists() and not (tmp_path / "b.safetensors").exists()
    assert all(len(p.splitlines()) == 1 for p in (proc.stderr.strip(),))


def test_export_of_a_plain_state_dict_with_rng_state(tmp_path):
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
    proc = _export(ckpt, tmp_path / "ok.safetensors")
    assert proc.returncode == 0, proc.stderr
    from safetensors.torch import load_file

    out = load_file(tmp_path / "ok.safetensors")
    official = adapt_keys(module, "official")  # exports carry official names
    assert set(out) == set(official) and all(
        torch.equal(out[k], v.float()) for k, v in official.items()
    )


def test_unwritable_destination_is_one_line(tmp_path):
    module = AVMAE(get_model_config("debug")).state_dict()
    ckpt = _tag_dir(tmp_path, {"module": module, "config": {"model": {"preset": "debug"}}})
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "sub" / "out.safetensors"
    proc = _export(ckpt, out)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith(f"error: {out}: cannot write the export (")
    assert len(proc.stderr.strip().splitlines()) == 1
