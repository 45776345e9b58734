"""The one training engine every task runs on (pretraining and each evaluation).

- :mod:`pipeline.engine.distributed` — process group, DeepSpeed config and engine.
- :mod:`pipeline.engine.step` — the sync-free step window (losses on the device, one read).
- :mod:`pipeline.engine.checkpoint` — save with markers and a non-finite guard, resume with fallback.
- :mod:`pipeline.engine.safeload` — restricted unpickling of checkpoints others hand around.
- :mod:`pipeline.engine.schedule` — warm-up + cosine LR with per-group scales, AdamW groups.
- :mod:`pipeline.engine.optim` — LARS and layer-wise LR decay groups (evaluation recipes).
- :mod:`pipeline.engine.preflight` — checks before DeepSpeed starts.
- :mod:`pipeline.engine.report` — console banner, ETA, summary.
- :mod:`pipeline.engine.loop` — the loop: steps, log / save / evaluate hooks.
"""
