"""The engine: the reactivex graph of one job pipeline, from the Redis source to the settle sink.

    request_n source ─▶ [user operators] ─▶ [buffer_with_time_or_count] ─▶ [throttle] ─▶ process ─▶ settle
      (fetch into the                                                     (tokens right             (ack / retry /
       in-flight list)                                                     before start)             dead, batched)

Demand flows right to left: ``process`` holds up to ``max_demand`` items and asks again when it holds
``min_demand`` (one item per free stage behind a throttle, whose tokens lapse), the batcher asks for what fills
the batches it was asked for, and the source fetches only that, never more than ``max_demand`` unsettled jobs.
A per-key limit (``key_from``) takes each job's tokens before the batcher instead, as a batch can mix keys.
The same parts serve config pipelines (:func:`assemble`) and pipelines written in code
(``Flume.source(...).pipe(...)``, then ``Flume.run``).

Modules: :mod:`~flume_rx.engine.source` (fetch, outstanding jobs, stopping), :mod:`~flume_rx.engine.processor`
(running workers), :mod:`~flume_rx.engine.settle` (outcomes to settlements) and
:mod:`~flume_rx.engine.assemble` (the graph of a configured pipeline).
"""
