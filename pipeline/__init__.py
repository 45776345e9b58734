"""Training and evaluation on streamed shard sets (DeepSpeed, MLflow).

Entry points (thin): :mod:`pipeline.train` (pretraining), :mod:`pipeline.evaluate` (downstream
tasks), :mod:`pipeline.cli` (the ``avfusion`` command), :mod:`pipeline.export`,
:mod:`pipeline.model_cli`; the typed config tree is :mod:`pipeline.config`.

Sub-packages by concern:
- :mod:`pipeline.data` — the one data path: epoch plan, shard I/O (local, S3, cache), streams,
  augmentation and the dense-task transform, the loader.
- :mod:`pipeline.engine` — the one training engine: distributed set-up and the DeepSpeed config,
  the sync-free step window, checkpoints (markers, fallback, safe loading), LR schedules and
  optimizer recipes, pre-flight checks, console reports.
- :mod:`pipeline.tracking` — MLflow tracking with a journal of pending records; run comparison.
- :mod:`pipeline.pretrain` — the AVMAE pretraining task: kNN probe, reconstruction figures.
- :mod:`pipeline.eval` — downstream evaluations as tasks of the engine (classification, AVS,
  separation, localization), their metrics and figures.
"""
