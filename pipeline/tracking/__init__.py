"""Run tracking: MLflow on rank 0, never blocking training.

- :mod:`pipeline.tracking.tracker` — ``Tracker``: params, metrics, artifacts in a background sender.
- :mod:`pipeline.tracking.pending` — the journal of records the server has not taken yet.
- :mod:`pipeline.tracking.runs` — ``avfusion runs compare`` / ``runs sync``.
"""
