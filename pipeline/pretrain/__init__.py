"""AVMAE pretraining as a task of the engine.

- :mod:`pipeline.pretrain.trainer` — the model, its step and hooks.
- :mod:`pipeline.pretrain.probe` — the kNN probe (and ``avfusion probe``).
- :mod:`pipeline.pretrain.figures` — reconstruction figures.
"""
