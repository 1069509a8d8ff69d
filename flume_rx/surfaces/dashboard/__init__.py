"""The web dashboard: queues, cluster-wide rates over time, in-flight jobs, consumers and dead letters.

Needs the ``dashboard`` extra (Starlette and uvicorn). Read-only unless started with ``allow_actions=True``
(``flume-rx dashboard --allow-actions``): the retry, delete, pause and resume endpoints answer 403 otherwise.
Everything the page needs is served from this package; it loads nothing from the internet.

>>> serve(config.load("flume.toml"), port=8642)  # doctest: +SKIP
"""

from __future__ import annotations

from flume_rx.surfaces.dashboard.app import create_app, serve

__all__ = ["create_app", "serve"]
