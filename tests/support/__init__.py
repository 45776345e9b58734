"""Test support shared by the tests and the benchmarks (never the reverse): real servers
(S3-compatible, MLflow), corpora and shard sets, look-alike public dataset trees, process helpers."""
