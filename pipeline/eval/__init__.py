"""Downstream evaluations of a pretrained encoder (REFERENCE.md §8): one entry point, tasks as config.

    deepspeed [launcher args] --module pipeline.evaluate --config configs/eval/X.yaml [key=value ...]
    torchrun --nproc-per-node 2 -m pipeline.evaluate --config configs/eval/X.yaml
    avfusion eval --config configs/eval/X.yaml                 # single process

How a task plugs in:

1. Config: :class:`pipeline.eval.config.EvalConfig` is the typed tree every task reads (``task``,
   ``encoder``, ``data``, ``optim``, ``train``, ``eval``, ``tracking``). A task that needs its own
   knobs adds a dataclass section to ``EvalConfig`` (e.g. ``avs: AVSConfig``) with defaults, so
   other tasks' YAML files stay valid; value checks go into ``validate_task`` there.
2. Code: a module ``pipeline/eval/<task>.py`` with ``run(cfg: EvalConfig, info: DistInfo) -> dict``.
   It is registered in :data:`pipeline.eval.tasks.TASKS` (imported lazily, so a task's
   dependencies load only when it runs). ``info`` comes from ``pipeline.engine.distributed.init_distributed``.
3. The encoder: :func:`pipeline.eval.encoder.load_encoder` builds the ``DeepAVFusion`` from
   ``cfg.encoder`` (training checkpoint, safetensors export or official file; strict ``encoder.*``
   load) and returns the pretraining run id when the source records one.
4. Result: ``run`` returns a flat dict of final metrics (JSON-serialisable). The entry point prints
   it as the last line of stdout on rank 0 (``{"task": ..., **metrics}``). Libraries raise
   (``AvfusionError`` or ``ValueError`` subclasses for bad input); the entry point turns them into
   one ``error: …`` line through ``avbase.errors.run_cli``.

Shared pieces for trainable tasks live in :mod:`pipeline.engine.loop` (DeepSpeed engine, epoch loop,
checkpoints with kill -9 resume, MLflow run) and :mod:`pipeline.engine.optim` (LARS, layer-wise LR
decay groups, the warm-up + cosine schedule with per-group scales).
"""
