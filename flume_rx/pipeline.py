"""The job pipeline's public names; the code lives in :mod:`flume_rx.engine` (source, processor, settle, assemble).

Kept so that ``from flume_rx.pipeline import JobSource`` (and the rest) works as it always did.
"""

from flume_rx.engine.assemble import assemble, cost_of, grant_batch
from flume_rx.engine.processor import run_workers
from flume_rx.engine.settle import Settler
from flume_rx.engine.source import Delivery, JobSource, NotStarted
from flume_rx.registry import load_callable

__all__ = [
    "Delivery",
    "JobSource",
    "NotStarted",
    "Settler",
    "assemble",
    "cost_of",
    "grant_batch",
    "load_callable",
    "run_workers",
]
