"""Downstream evaluations of a pretrained encoder (REFERENCE.md §8), as tasks of the one engine.

    deepspeed [launcher args] --module pipeline.evaluate --config configs/eval/X.yaml [key=value ...]
    torchrun --nproc-per-node 2 -m pipeline.evaluate --config configs/eval/X.yaml
    avfusion eval --config configs/eval/X.yaml                 # single process

Map:
- :mod:`pipeline.eval.config` — ``EvalConfig``, the typed tree (``task``, ``encoder``, ``data``
  {train, test} loaders, ``optim``, ``train`` (the engine's ``RunConfig``), ``eval``, one section
  per task family, ``tracking``).
- :mod:`pipeline.eval.encoder` — the encoder under evaluation from a training checkpoint, an
  export or an official file (strict ``encoder.*`` load).
- :mod:`pipeline.eval.run` — the output folder and MLflow run of an evaluation.
- Tasks (each a :class:`pipeline.engine.loop.Task` with ``run(cfg, info) -> metrics``, registered
  in :data:`pipeline.eval.tasks.TASKS`): :mod:`~pipeline.eval.classification` (``linear``,
  ``finetune``; targets and losses in :mod:`~pipeline.eval.targets`), :mod:`~pipeline.eval.avs`,
  :mod:`~pipeline.eval.separation` (audio in :mod:`~pipeline.eval.separation_audio`),
  :mod:`~pipeline.eval.localization`; the dense ones share :mod:`~pipeline.eval.dense`.
- Metrics, each named for its published definition: :mod:`pipeline.eval.metrics`
  (classification, segmentation, localization, separation, baselines); ``avfusion eval score``
  (:mod:`pipeline.eval.score`) runs them on saved predictions; pictures: :mod:`pipeline.eval.figures`.

A new task: a ``Task`` subclass (model, loader from :mod:`pipeline.data`, LR schedule,
optimizer, ``step``; ``after_epoch`` for periodic evaluations), a ``run`` that builds the engine
and scores, an entry in ``TASKS`` and, for its own knobs, a config section in ``EvalConfig``.
The entry point prints ``{"task": ..., **metrics}`` as the last line of stdout (rank 0).
"""
