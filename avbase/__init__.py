"""The bottom layer every avfusion package imports (and which imports nothing of ours).

- :mod:`avbase.errors` — ``AvfusionError``, the exit codes, ``run_cli`` (one ``error:`` line).
- :mod:`avbase.urls` — credential redaction of URLs and config trees.
- :mod:`avbase.progress` — progress bars on a terminal, count/rate/ETA lines in logs.
- :mod:`avbase.shardformat` — the shard-set contract: names, manifest, the tar reader.
- :mod:`avbase.members` — the member table of a sample (pattern, encode, decode, check).
- :mod:`avbase.features` — feature specs: audio front ends (``FRONTENDS``) and ``ImageSpec``.

Above it: ``model`` (pure modules), ``preprocess`` (videos → shards) and ``pipeline``
(loader, engine, tracking, evaluations), which imports the other two; ``deploy`` stands apart.
"""
