"""Scoring on a Ray cluster (`scoring`) and a local multi-node Ray cluster on loopback for tests and
benchmarks (`local`). Ray is an optional dependency (`pip install attention-influence[ray]`), imported only
inside these functions."""
