# syntax=docker/dockerfile:1
# avfusion image: the project installed from its own pyproject.toml (same pins as every other
# install), non-root, entrypoint `avfusion`. Build from the repository root:
#   docker build -t REGISTRY/avfusion:TAG .
#
# NOTE: torch 2.14.1's default PyPI wheel is a CUDA 13.0 build (cu130) that brings cuBLAS,
# cuDNN and NCCL as pip packages (nvidia-*). The `-base` CUDA flavour carries the matching
# CUDA runtime (cudart) and the NVIDIA container-toolkit settings; the `-runtime` flavour would
# add a second ~3 GB copy of the libraries the wheels already ship. Keep CUDA_VERSION's
# major.minor equal to torch.version.cuda (tests/deploy check it).
ARG CUDA_VERSION=13.0.2
ARG UBUNTU_VERSION=24.04

# ---- build: a virtual environment with the pinned dependencies and the project -----------
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu${UBUNTU_VERSION} AS build
# NOTE: apt packages are left to the release pinned by the base tag (security updates flow).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /src
# Dependencies first (cached until pyproject.toml changes), then the project code. The extras
# are derived: every optional-dependency group of pyproject.toml except `dev` (the MLflow server's
# `server`, the evaluations' extras...), so a new runtime extra reaches the image by itself.
COPY pyproject.toml README.md ./
RUN mkdir avbase preprocess model pipeline deploy \
 && extras=$(python3 -c "import tomllib; groups = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; print(','.join(sorted(set(groups) - {'dev'})))") \
 && pip install --no-cache-dir "./[$extras]"
COPY avbase avbase
COPY preprocess preprocess
COPY model model
COPY pipeline pipeline
COPY deploy deploy
RUN pip install --no-cache-dir --no-deps --force-reinstall .

# ---- final: Python runtime, the C/C++ toolchain torch.compile needs, the venv; no pip caches --
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu${UBUNTU_VERSION}
# NOTE: what runs here. `train.compile=true` (torch.compile) works: Triton builds its CUDA
# launcher at run time with gcc against Python.h, and inductor's CPU kernels need g++ — hence
# gcc, g++ and python3-dev (headers; binutils and libc6-dev come with them). torch's fused
# AdamW is part of the torch wheel and needs nothing. Not available: DeepSpeed's JIT-built ops
# (FusedAdam, CPUAdam, ...) need the CUDA toolkit (nvcc, headers) of a -devel image, ~5 GB
# more; the trainer uses torch's optimisers instead.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-dev gcc g++ \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin avfusion \
 && install -d -o 10001 -g 10001 /workspace
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /workspace
COPY configs configs
USER 10001:10001
ENTRYPOINT ["avfusion"]
CMD ["--help"]
