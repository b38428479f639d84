"""The benchmark harness that compares tqueues with other Python job queues.

Run it with ``python3 benchmarks/run.py``; see ``benchmarks/README.md`` for the method.
"""
