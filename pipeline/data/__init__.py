"""The one data path: shard set → augmented batches on every rank (every task reads through it).

- :mod:`pipeline.data.epochplan` — which samples each rank/worker reads in an epoch, in order.
- :mod:`pipeline.data.mixture` — the sets of ``data.shards``: checks, names, samples per epoch.
- :mod:`pipeline.data.shardio` — shard reads: local files, S3 with retries, node-local cache.
- :mod:`pipeline.data.stream` — one worker's stream: raw samples → transformed batches, errors.
- :mod:`pipeline.data.augment` — the paper's training / evaluation transforms of a sample.
- :mod:`pipeline.data.dense` — dense-task items (frames with masks or waveforms).
- :mod:`pipeline.data.jpeg` — JPEG decode (TorchCodec) and uint8 resizing.
- :mod:`pipeline.data.loader` — ``ShardLoader``: the rank's loader with resume state.
- :mod:`pipeline.data.cli` — ``avfusion data bench``.
"""
