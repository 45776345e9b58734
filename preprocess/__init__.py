"""Videos → shard sets (``avfusion shards build|verify|inspect|merge``, ``avfusion synth``).

Inputs (:mod:`~preprocess.inputs`, :mod:`~preprocess.labels`) → decode with PyAV
(:mod:`~preprocess.decode`) → clips and features (:mod:`~preprocess.clips`,
:mod:`~preprocess.features`, :mod:`~preprocess.samples`, :mod:`~preprocess.dense_members`) →
shards written atomically and resumably (:mod:`~preprocess.build`, :mod:`~preprocess.shards`,
:mod:`~preprocess.storage`, :mod:`~preprocess.shuffle`, :mod:`~preprocess.pool`); checks and
tools: :mod:`~preprocess.verify`, :mod:`~preprocess.merge`, :mod:`~preprocess.preview`,
:mod:`~preprocess.synth`. The shard format itself is :mod:`avbase.shardformat`. Imports nothing
of ``model`` or ``pipeline``.
"""
