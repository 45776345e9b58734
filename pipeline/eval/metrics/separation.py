"""Sound separation metrics: BSS Eval v3 SDR / SIR / SAR in dB (Vincent et al. 2006, through
``mir_eval.separation.bss_eval_sources``), as the release scores its mix-and-separate model
(stoneMo/DeepAVFusion ``eval_avsrcsep.py``):

- each test pair: ``references [S, T]`` and ``estimates [S, T]`` (estimate k for reference k,
  no permutation search);
- a pair is skipped when any reference or any estimate has energy ``Σ x² < 1e-5``;
- the results are the means over all scored (pair, source) values.
NOTE: computed in float64 (the release hands mir_eval float32 arrays; the difference is far below
the 1e-3 dB that matters).
"""

from __future__ import annotations

import warnings

import mir_eval
import numpy as np
import torch

SILENCE = 1e-5  # energy Σ x² below which a pair is not scored
METRICS = ("sdr", "sir", "sar")


def silent(x: np.ndarray, threshold: float = SILENCE) -> bool:
    """Whether any row of ``x [S, T]`` has energy below ``threshold``."""
    return bool(((np.asarray(x, dtype=np.float64) ** 2).sum(-1) < threshold).any())


def bss_pair(
    references: np.ndarray, estimates: np.ndarray, threshold: float = SILENCE
) -> np.ndarray | None:
    """``[3, S]`` (SDR, SIR, SAR per source) of one pair, or None when it is skipped (silent).

    NOTE: mir_eval 0.8 marks its separation module deprecated (removal announced for 0.9); the
    pin keeps BSS Eval v3 as the release used it, and the per-call warning is silenced here only.
    """
    refs = np.asarray(references, dtype=np.float64)
    ests = np.asarray(estimates, dtype=np.float64)
    if refs.shape != ests.shape or refs.ndim != 2:
        raise ValueError(
            f"separation: references {list(refs.shape)} and estimates {list(ests.shape)} "
            "must both be [S, T]"
        )
    if silent(refs, threshold) or silent(ests, threshold):
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"mir_eval\.separation\.", category=FutureWarning)
        sdr, sir, sar, _ = mir_eval.separation.bss_eval_sources(
            refs, ests, compute_permutation=False
        )
    return np.stack([sdr, sir, sar])


class SeparationScores:
    """Accumulates ``update(references [N, S, T], estimates [N, S, T])``; ``result()`` →
    ``sdr``, ``sir``, ``sar`` (dB), ``pairs`` (scored). ``sums`` (float64: scored pairs, scored
    sources, Σ SDR, Σ SIR, Σ SAR) is the state ranks all-reduce."""

    def __init__(self, threshold: float = SILENCE):
        self.threshold = threshold
        self.sums = torch.zeros(2 + len(METRICS), dtype=torch.float64)

    def update(self, references, estimates) -> None:
        for refs, ests in zip(_numpy(references), _numpy(estimates), strict=True):
            scores = bss_pair(refs, ests, self.threshold)
            if scores is not None:
                self.sums += torch.tensor([1, scores.shape[1], *scores.sum(1)], dtype=torch.float64)

    def result(self) -> dict[str, float]:
        if self.sums[0] == 0:
            raise ValueError("separation: no test pair with non-silent references and estimates")
        means = (self.sums[2:] / self.sums[1]).tolist()
        return {**dict(zip(METRICS, means, strict=True)), "pairs": int(self.sums[0])}


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
