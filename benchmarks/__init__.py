"""The benchmark suite: flume_rx measured side by side with the job queues people would otherwise pick.

Run it with ``python -m benchmarks run [--quick] [--only NAME] [--out PATH]``; see benchmarks/README.md.
"""
