"""Configuration: a TOML file (or a dict) checked into dataclasses, times in ms converted to seconds here.

Every error names the key, the value, and the fix, in one sentence, and nothing starts until all is valid.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from flume_rx.model.codec import DEFAULT_MAX_PAYLOAD_BYTES
from flume_rx.model.errors import ConfigError
from flume_rx.model.job import check_name
from flume_rx.model.schedules import ScheduleConfig, parse_schedules
from flume_rx.model.urls import REDIS_URL_SCHEMES, invalid_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True)
class RateLimiterConfig:
    """At most ``allowed`` job starts (or cost units) in any sliding ``period_s``, shared through Redis by ``key``."""

    allowed: int
    period_s: float
    key: str
    adaptive: bool = False
    hold_s: float = 0.02
    burst: int | None = None  # None: allowed // 20; 0: no pacing
    from_ses: float | None = None
    cost: str | None = None  # "module:function" computing a job's cost from its args
    key_from: str | None = None  # "module:function" giving the key of a job's own window (per-key limits)


@dataclass(frozen=True, slots=True)
class BatcherConfig:
    size: int
    timeout_s: float


@dataclass(frozen=True, slots=True)
class RetryConfig:
    max_retries: int = 5
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    stages: int = 10
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    name: str
    queue: str
    max_demand: int = 100
    min_demand: int | None = None
    """The processor asks for more jobs once it holds this few (half of ``max_demand`` when None)."""
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    rate_limiter: RateLimiterConfig | None = None
    batcher: BatcherConfig | None = None
    retry: RetryConfig = field(default_factory=RetryConfig)
    operators: tuple[str, ...] = ()
    queues: tuple[QueueWeight, ...] = ()
    """The queues of a multi-queue pipeline (``queues = [{name, weight}]``); empty for one ``queue``."""
    order: Literal["weighted", "strict"] = "weighted"

    @property
    def all_queues(self) -> tuple[str, ...]:
        """Every queue this pipeline fetches from."""
        return tuple(q.name for q in self.queues) or (self.queue,)


@dataclass(frozen=True, slots=True)
class QueueWeight:
    """One queue of a multi-queue pipeline and its share of the pipeline's demand."""

    name: str
    weight: int = 1


@dataclass(frozen=True, slots=True)
class FlumeConfig:
    redis_url: str = DEFAULT_REDIS_URL
    namespace: str = "flume"
    imports: tuple[str, ...] = ()
    pipelines: tuple[PipelineConfig, ...] = ()
    orphan_timeout_s: float = 15.0
    shutdown_timeout_s: float = 30.0
    dead_max: int = 10_000
    dead_ttl_s: float = 7 * 24 * 3600.0
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    schedules: tuple[ScheduleConfig, ...] = ()
    cpu_affinity: CpuAffinity = "spread"

    def pipeline(self, name: str) -> PipelineConfig:
        for pipeline in self.pipelines:
            if pipeline.name == name:
                return pipeline
        known = ", ".join(p.name for p in self.pipelines) or "none"
        raise ConfigError(
            f"no pipeline named {name!r} in the config (known: {known}); add [pipelines.{name}]"
        )


CpuAffinity = Literal["spread", "off"] | tuple[int, ...]
"""Where worker processes run (``cpu_affinity``): ``"spread"``, each worker process, while it is busy, on one CPU
no other worker process of the host holds (see :mod:`~flume_rx.surfaces.cpu_keeper`); ``"off"``, where the OS
puts them; or CPU numbers, process i on the i-th of them in turn (a lone process on the first)."""

_TOP_KEYS = {
    "cpu_affinity",
    "redis_url",
    "namespace",
    "imports",
    "pipelines",
    "orphan_timeout",
    "shutdown_timeout",
    "dead_letters",
    "max_payload_bytes",
    "schedules",
}


def pacing_burst(allowed: int, configured: int | None) -> int | None:
    """The window's pacing burst: as configured (0 turns pacing off), else a twentieth of the limit."""
    if configured is None:
        return max(1, allowed // 20)
    return configured or None


def default_redis_url() -> str:
    """FLUME_REDIS_URL, else the local default."""
    return os.environ.get("FLUME_REDIS_URL") or DEFAULT_REDIS_URL


CONFIG_FILE = "flume.toml"
"""The config file looked for in the current directory when neither ``--config`` nor FLUME_CONFIG names one."""


def find_config(path: str | Path | None = None) -> Path | None:
    """The config file to use: ``path``, else FLUME_CONFIG, else ``./flume.toml`` if it exists, else None.

    An explicit choice (the argument, then the environment) wins over the file found by looking.
    """
    chosen = path or os.environ.get("FLUME_CONFIG")
    if chosen:
        return Path(chosen)
    found = Path(CONFIG_FILE)
    return found if found.is_file() else None


def load(path: str | Path, *, redis_url: str | None = None) -> FlumeConfig:
    """Read and check a TOML config file.

    The Redis URL is, first found: ``redis_url`` (e.g. from the CLI), FLUME_REDIS_URL, the file's
    ``redis_url``, ``redis://127.0.0.1:6379/0``; so one file serves every environment.
    """
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {str(file)!r} does not exist; pass the path of your TOML file"
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"config file {str(file)!r} is a directory; pass the TOML file itself, e.g. {str(file / CONFIG_FILE)!r}"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"config file {str(file)!r} cannot be read (permission denied); check its mode"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {str(file)!r} is not UTF-8 text ({exc}); pass the TOML file"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {str(file)!r} is not valid TOML ({exc}); fix the syntax there"
        ) from None
    redis_url = redis_url or os.environ.get("FLUME_REDIS_URL")
    if redis_url:
        raw["redis_url"] = redis_url
    return parse(raw)


def select_pipelines(config: FlumeConfig, queues: Sequence[str]) -> FlumeConfig:
    """The config with only the pipelines serving one of ``queues`` (a multi-queue pipeline is kept whole).

    Raises:
        ConfigError: a queue no pipeline of the config serves.
    """
    served = {q for p in config.pipelines for q in p.all_queues}
    unknown = [q for q in queues if q not in served]
    if unknown:
        raise ConfigError(
            f"--queues names {', '.join(repr(q) for q in unknown)}, which no pipeline of the config serves "
            f"(served: {', '.join(sorted(served)) or 'none'}); fix the name or add a pipeline"
        )
    wanted = set(queues)
    return replace(config, pipelines=tuple(p for p in config.pipelines if wanted & set(p.all_queues)))


def parse(raw: Mapping[str, Any]) -> FlumeConfig:
    """Check a config mapping (the TOML document) and build a :class:`FlumeConfig`."""
    _reject_unknown(raw, _TOP_KEYS, "")
    redis_url = _str(raw, "redis_url", "", default=default_redis_url())
    if not redis_url.startswith(REDIS_URL_SCHEMES):
        raise invalid_url(redis_url, "an unknown scheme")
    namespace = _str(raw, "namespace", "", default="flume")
    if not namespace or any(c in namespace for c in "{}: "):
        raise ConfigError(
            f"namespace must be non-empty without '{{', '}}', ':' or spaces (got {namespace!r})"
        )
    imports = raw.get("imports", [])
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise ConfigError(f'imports must be a list of module names (got {imports!r}); e.g. ["myapp.workers"]')
    dead = raw.get("dead_letters", {})
    _table(dead, "dead_letters")
    _reject_unknown(dead, {"max", "ttl"}, "dead_letters.")
    pipelines_raw = raw.get("pipelines", {})
    _table(pipelines_raw, "pipelines")
    pipelines = tuple(_pipeline(name, table) for name, table in pipelines_raw.items())
    check_one_pipeline_per_queue(pipelines)
    return FlumeConfig(
        redis_url=redis_url,
        namespace=namespace,
        imports=tuple(imports),
        pipelines=pipelines,
        orphan_timeout_s=_ms(raw, "orphan_timeout", "", default=15_000),
        shutdown_timeout_s=_ms(raw, "shutdown_timeout", "", default=30_000, allow_zero=True),
        dead_max=_positive_int(dead, "max", "dead_letters.", default=10_000),
        dead_ttl_s=_ms(dead, "ttl", "dead_letters.", default=7 * 24 * 3600 * 1000),
        max_payload_bytes=_positive_int(raw, "max_payload_bytes", "", default=DEFAULT_MAX_PAYLOAD_BYTES),
        schedules=parse_schedules(raw.get("schedules", {})),
        cpu_affinity=_cpu_affinity(raw.get("cpu_affinity", "spread")),
    )


def _cpu_affinity(value: Any) -> CpuAffinity:
    if value == "spread" or value == "off":
        return cast(CpuAffinity, value)
    if (
        isinstance(value, list)
        and value
        and all(isinstance(cpu, int) and not isinstance(cpu, bool) and cpu >= 0 for cpu in value)
    ):
        return tuple(value)
    raise ConfigError(
        f'cpu_affinity must be "spread", "off" or a non-empty list of CPU numbers (got {value!r}); '
        "e.g. cpu_affinity = [0, 1]"
    )


_PIPELINE_KEYS = {
    "queue", "max_demand", "min_demand", "processor", "rate_limiter", "batcher", "retry", "operators", "queues", "order",
}  # fmt: skip


def check_one_pipeline_per_queue(pipelines: Sequence[PipelineConfig]) -> None:
    """Refuse two pipelines of one process on the same queue.

    Their jobs would share the process's in-flight list of that queue, and a pipeline that lost a fetch's
    reply gives back every job in that list it does not know of: the other pipeline's jobs would run twice.

    Raises:
        ConfigError: naming the queue and both pipelines.
    """
    served_by: dict[str, int] = {}
    for index, pipeline in enumerate(pipelines):
        for queue in pipeline.all_queues:
            first = served_by.setdefault(queue, index)
            if first != index:
                other = pipelines[first].name
                which = (
                    f"pipelines.{other} and pipelines.{pipeline.name}"
                    if other != pipeline.name
                    else "two pipelines (two flume.source() calls?)"
                )
                raise ConfigError(
                    f"queue {queue!r} is served by {which}; one process runs one pipeline per queue, so merge "
                    "them (raise max_demand for more jobs at once) or run them in separate processes"
                )


def _pipeline(name: str, table: Any) -> PipelineConfig:
    where = f"pipelines.{name}."
    _table(table, f"pipelines.{name}")
    _reject_unknown(table, _PIPELINE_KEYS, where)
    queues = _queues(table.get("queues"), where)
    queue = _str(table, "queue", where, default=queues[0].name if queues else name)
    check_name(queue, f"{where}queue")
    if queues and queue not in {q.name for q in queues}:
        raise ConfigError(f"{where}queue {queue!r} is not in {where}queues; drop queue or list it in queues")
    order = table.get("order", "weighted")
    if order not in ("weighted", "strict"):
        raise ConfigError(f'{where}order must be "weighted" or "strict" (got {order!r})')
    max_demand = _positive_int(table, "max_demand", where, default=100)
    min_demand = check_min_demand(table.get("min_demand"), max_demand, f"{where}min_demand")

    processor_raw = table.get("processor", {})
    _table(processor_raw, f"{where}processor")
    _reject_unknown(processor_raw, {"stages", "timeout"}, f"{where}processor.")
    timeout_ms = processor_raw.get("timeout")
    processor = ProcessorConfig(
        stages=_positive_int(processor_raw, "stages", f"{where}processor.", default=10),
        timeout_s=None
        if timeout_ms is None
        else _ms(processor_raw, "timeout", f"{where}processor.", default=0),
    )

    rate_limiter = None
    if "rate_limiter" in table:
        rl = table["rate_limiter"]
        rl_where = f"{where}rate_limiter."
        _table(rl, f"{where}rate_limiter")
        _reject_unknown(
            rl,
            {"allowed", "period", "key", "adaptive", "hold", "from_ses", "cost", "key_from", "burst"},
            rl_where,
        )
        burst = rl.get("burst")
        if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 0):
            raise ConfigError(
                f"{rl_where}burst must be an integer >= 0 (got {burst!r}); the most tokens granted at once "
                "while pacing, 0 for no pacing"
            )
        from_ses = rl.get("from_ses")
        if from_ses is not None and (
            isinstance(from_ses, bool) or not isinstance(from_ses, int | float) or not 0 < from_ses <= 1
        ):
            raise ConfigError(
                f"{rl_where}from_ses must be a fraction in (0, 1] (got {from_ses!r}); e.g. 0.9 for 90% of SES's rate"
            )
        if from_ses is None and "allowed" not in rl:
            raise ConfigError(
                f"{rl_where}allowed is missing; set it to the jobs allowed per period (or use from_ses)"
            )
        adaptive = rl.get("adaptive", False)
        if not isinstance(adaptive, bool):
            raise ConfigError(f"{rl_where}adaptive must be true or false (got {adaptive!r})")
        cost = rl.get("cost")
        if cost is not None and (not isinstance(cost, str) or ":" not in cost):
            raise ConfigError(f'{rl_where}cost must name a function as "module:function" (got {cost!r})')
        key_from = rl.get("key_from")
        if key_from is not None:
            if not isinstance(key_from, str) or ":" not in key_from:
                raise ConfigError(
                    f'{rl_where}key_from must name a function as "module:function" (got {key_from!r})'
                )
            if adaptive or from_ses is not None:
                raise ConfigError(
                    f"{rl_where}key_from cannot be combined with {'adaptive' if adaptive else 'from_ses'}, "
                    "which sets one rate shared by every job downstream, not a rate per key; drop one of them"
                )
        rate_limiter = RateLimiterConfig(
            allowed=_positive_int(rl, "allowed", rl_where, default=1),
            period_s=_ms(rl, "period", rl_where, default=1000),
            key=_str(rl, "key", rl_where, default=queue),
            adaptive=adaptive,
            hold_s=_ms(rl, "hold", rl_where, default=20),
            from_ses=None if from_ses is None else float(from_ses),
            cost=cost,
            key_from=key_from,
            burst=burst,
        )

    batcher = None
    if "batcher" in table:
        b = table["batcher"]
        _table(b, f"{where}batcher")
        _reject_unknown(b, {"size", "timeout"}, f"{where}batcher.")
        if "size" not in b:
            raise ConfigError(f"{where}batcher.size is missing; set it to the most jobs per batch, e.g. 50")
        batcher = BatcherConfig(
            size=_positive_int(b, "size", f"{where}batcher.", default=1),
            timeout_s=_ms(b, "timeout", f"{where}batcher.", default=100),
        )
        if batcher.size > max_demand:
            raise ConfigError(
                f"{where}batcher.size ({batcher.size}) is larger than {where}max_demand ({max_demand}), so a "
                "batch could never fill; raise max_demand or lower the batch size"
            )

    retry_raw = table.get("retry", {})
    _table(retry_raw, f"{where}retry")
    r_where = f"{where}retry."
    _reject_unknown(retry_raw, {"max_retries", "backoff_initial", "backoff_max"}, r_where)
    retry = RetryConfig(
        max_retries=_non_negative_int(retry_raw, "max_retries", r_where, default=5),
        backoff_initial_s=_ms(retry_raw, "backoff_initial", r_where, default=1000),
        backoff_max_s=_ms(retry_raw, "backoff_max", r_where, default=3_600_000),
    )
    if retry.backoff_max_s < retry.backoff_initial_s:
        raise ConfigError(
            f"{r_where}backoff_max ({retry.backoff_max_s * 1000:g}) is below {r_where}backoff_initial "
            f"({retry.backoff_initial_s * 1000:g}); make the cap at least the first delay"
        )

    operators = table.get("operators", [])
    if not isinstance(operators, list) or not all(isinstance(o, str) and ":" in o for o in operators):
        raise ConfigError(
            f'{where}operators must be a list of "module:attribute" operator paths (got {operators!r})'
        )
    return PipelineConfig(
        name=name,
        queue=queue,
        max_demand=max_demand,
        min_demand=min_demand,
        processor=processor,
        rate_limiter=rate_limiter,
        batcher=batcher,
        retry=retry,
        operators=tuple(operators),
        queues=queues,
        order=order,
    )


def check_min_demand(value: Any, max_demand: int, name: str) -> int | None:
    """``min_demand`` (None, or an integer from 0 to ``max_demand - 1``), as given.

    Raises:
        ConfigError: naming ``name``, the value and the bound.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < max_demand:
        raise ConfigError(
            f"{name} must be an integer from 0 to max_demand - 1 = {max_demand - 1} (got {value!r}); it is how "
            "few jobs the processor holds before it fetches more (default: half of max_demand)"
        )
    return value


def queue_weights(queues: Sequence[str | tuple[str, int]], order: str) -> tuple[QueueWeight, ...]:
    """The queues of ``Flume.source([...])`` (names, or ``(name, weight)`` pairs), checked as config ``queues``
    and ``order`` are."""
    if order not in ("weighted", "strict"):
        raise ConfigError(f'source(order=...) must be "weighted" or "strict" (got {order!r})')
    if isinstance(queues, str) or not queues:
        raise ConfigError(f"source() needs a queue name or a non-empty list of them (got {queues!r})")
    raw: list[dict[str, Any]] = []
    for entry in queues:
        if isinstance(entry, str):
            raw.append({"name": entry})
        elif isinstance(entry, tuple) and len(entry) == 2:
            raw.append({"name": entry[0], "weight": entry[1]})
        else:
            raise ConfigError(
                f'source() takes queue names or (name, weight) pairs (got {entry!r}); e.g. ("mail/bulk", 1)'
            )
    return _queues(raw, "source() ")


def _queues(raw: Any, where: str) -> tuple[QueueWeight, ...]:
    """``queues = [{name, weight}]``: every name in one ``group/`` so one Lua call can fetch from all."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f'{where}queues must be a non-empty list like [{{name = "a/hi", weight = 10}}]')
    result: list[QueueWeight] = []
    for index, entry in enumerate(raw):
        at = f"{where}queues[{index}]."
        _table(entry, f"{where}queues[{index}]")
        _reject_unknown(entry, {"name", "weight"}, at)
        name = _str(entry, "name", at, default="")
        check_name(name, f"{at}name")
        result.append(QueueWeight(name, _positive_int(entry, "weight", at, default=1)))
    names = [q.name for q in result]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}queues lists a queue twice ({names}); list each once")
    groups = {n.partition("/")[0] if "/" in n.strip("/") else None for n in names}
    if len(result) > 1 and (len(groups) != 1 or None in groups):
        raise ConfigError(
            f'{where}queues {names} must share one group, named like "email/urgent" and "email/bulk", so '
            "their keys share a Redis Cluster slot and one call fetches from all; rename them"
        )
    return tuple(result)


def _reject_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(
                f"unknown config key {where}{key}; remove it or use one of: {', '.join(sorted(known))}"
            )


def _table(value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where} must be a table (got {value!r}); write it as [{where}] or {{ key = value }}"
        )


def _str(table: Mapping[str, Any], key: str, where: str, *, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{where}{key} must be a string (got {value!r})")
    return value


def _positive_int(table: Mapping[str, Any], key: str, where: str, *, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}{key} must be a positive integer (got {value!r}); set it to 1 or more")
    return value


def _non_negative_int(table: Mapping[str, Any], key: str, where: str, *, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}{key} must be an integer >= 0 (got {value!r})")
    return value


def _ms(table: Mapping[str, Any], key: str, where: str, *, default: float, allow_zero: bool = False) -> float:
    """A duration given in milliseconds, returned in seconds."""
    value = table.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{where}{key} must be a number of milliseconds {bound} (got {value!r})")
    return float(value) / 1000.0
