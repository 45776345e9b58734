#!/usr/bin/env bash
# The image's Python environment, checked without Docker (#18): build a virtualenv from exactly
# what the Dockerfile's final stage holds — the project plus the extras the Dockerfile derives
# from pyproject.toml, same pins, no `dev` extra, installed the same two ways — then run one
# compiled (torch.compile) training step of the debug model in it, from outside the checkout so
# the installed package is what runs. CUDA + bf16 autocast when a GPU is present, else CPU fp32.
#
#   deploy/check_image_env.sh [VENV]      VENV default /tmp/avfusion-image-venv; PYTHON=python3
#
# Not part of the test suite (minutes, several GB); its last line is one JSON object.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-/tmp/avfusion-image-venv}
python=${PYTHON:-python3}

extras=$(cd "$repo" && "$python" - <<'EOF'
import re, subprocess, sys
(code,) = re.findall(r'extras=\$\(python3 -c "([^"]+)"\)', open("Dockerfile").read())
print(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
EOF
)
echo "image extras: [$extras]"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --no-cache-dir "$repo[$extras]"
"$venv/bin/pip" install --quiet --no-cache-dir --no-deps --force-reinstall "$repo"
"$venv/bin/pip" check

cd "$(mktemp -d)"
# Compiled kernels are cached with the venv (a run killed mid-compile can leave a broken
# entry in a shared cache; delete the folder to compile from scratch).
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$venv/inductor-cache}
"$venv/bin/python" - <<'EOF'
import importlib.util, json, sys, time

import torch
from torch._dynamo.utils import counters

import model
from model import AVMAE, get_model_config

dev_tools = [m for m in ("pytest", "ruff", "kubernetes_validate") if importlib.util.find_spec(m)]
assert not dev_tools, f"dev extra leaked into the image environment: {dev_tools}"
assert model.__file__.startswith(sys.prefix), model.__file__      # the installed package

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32
cfg = get_model_config("debug")
torch.manual_seed(0)
image = torch.randn(4, 3, cfg.image_size, cfg.image_size, device=device)
audio = torch.randn(4, 1, *cfg.audio_size, device=device)
ids = {m: torch.rand(4, n, generator=torch.Generator().manual_seed(k)).argsort(1).to(device)
       for k, (m, n) in enumerate((("image", (cfg.image_size // cfg.patch_size) ** 2),
                                   ("audio", cfg.audio_size[0] * cfg.audio_size[1] // cfg.patch_size ** 2)))}
masks = {m: {"ids_shuffle": v} for m, v in ids.items()}


def train_step(compiled: bool) -> tuple[float, float, float]:
    """One AdamW step; (loss, seconds, first parameter's value after the step)."""
    torch.manual_seed(0)
    net = AVMAE(cfg).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=device == "cuda")
    forward = torch.compile(net) if compiled else net
    t0 = time.perf_counter()
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        loss = forward(image, audio, masks=masks).loss
    loss.backward()
    opt.step()
    return loss.item(), time.perf_counter() - t0, next(net.parameters()).flatten()[0].item()


eager = train_step(compiled=False)
compiled = train_step(compiled=True)
graphs = counters["stats"]["unique_graphs"]
tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
ok = graphs > 0 and abs(compiled[0] - eager[0]) <= tol * abs(eager[0]) and abs(compiled[2] - eager[2]) <= tol
print(json.dumps({"check": "compiled_train_step", "ok": ok, "device": device, "dtype": str(dtype),
                  "python": sys.version.split()[0], "torch": torch.__version__,
                  "compiled_graphs": graphs, "loss_eager": round(eager[0], 6),
                  "loss_compiled": round(compiled[0], 6), "compile_and_step_s": round(compiled[1], 1)}))
sys.exit(0 if ok else 1)
EOF
