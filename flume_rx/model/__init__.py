"""Model and codec: jobs, their records, workers' registry, the config and its checks, telemetry events.

Pure data and checks, no Redis and no reactivex; every other layer builds on these (see DEVELOPERS.md).
"""
