"""One small module per system: its connection, tuning and the benchmark job.

Worker command lines import these modules, so each reads its broker or database address from
the environment the harness sets (``BENCH_BROKER_URL``) and defines nothing but what its
worker needs.
"""
