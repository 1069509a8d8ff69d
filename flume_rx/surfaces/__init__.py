"""Surfaces: what users touch. The producer and ``Flume`` client, the worker process, the command line, the
dashboard, ``stats --watch``, Prometheus metrics, the demo and the embedded redis-server.

They hold no logic the layers below could hold (see DEVELOPERS.md); ``flume_rx.testing`` is a surface too,
kept at the top because users import it by that name.
"""
