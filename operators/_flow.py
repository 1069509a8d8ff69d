"""The request-n protocol that lets back pressure flow upstream through a reactivex graph.

reactivex 4 has no back pressure: an Observable pushes whatever it has. A :class:`Flowable` is an Observable
that can also be subscribed *with a* :class:`Demand`, the channel through which the subscriber says how many
more items it is ready for (Reactive Streams' ``Subscription.request(n)``). A Flowable never emits more than
was requested. Subscribed the plain reactivex way it sees an unbounded demand, so Flowables stay ordinary
Observables for every reactivex operator and subscriber.

Demand-aware operators (``throttle``, ``buffer_with_time_or_count``, ``process``) return Flowables and
translate their downstream demand into the demand they put on their upstream. Plain reactivex operators
placed in a Flowable's ``pipe`` are lifted: the demand of their subscriber is handed straight to their
upstream, which is exact for operators that emit one item per item (``map``, ``do_action``, ``timestamp``).
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import Disposable
from reactivex.observer import Observer
from reactivex.observer.autodetachobserver import AutoDetachObserver

_T = TypeVar("_T")
_U = TypeVar("_U")

UNBOUNDED = sys.maxsize


class Demand:
    """How many items a subscriber has requested and not yet received.

    The subscriber calls :meth:`request`; the producer calls :meth:`take` as it emits and listens with
    :meth:`on_request`. Thread-safe; listeners run on the thread that called :meth:`request`.

    >>> demand = Demand()
    >>> demand.request(3)
    >>> demand.take(5)
    3
    >>> demand.pending
    0
    """

    __slots__ = ("_invalid", "_invalid_listeners", "_listeners", "_lock", "_pending", "_unbounded")

    def __init__(self, initial: int = 0, *, unbounded: bool = False) -> None:
        if initial < 0:
            raise ValueError(f"initial demand must be >= 0 (got {initial})")
        self._lock = threading.Lock()
        self._pending = initial
        self._unbounded = unbounded
        self._listeners: list[Callable[[], None]] = []
        self._invalid: ValueError | None = None
        self._invalid_listeners: list[Callable[[ValueError], None]] = []

    @classmethod
    def unlimited(cls) -> Demand:
        """The demand of a plain reactivex subscriber: everything, at once."""
        return cls(unbounded=True)

    @property
    def unbounded(self) -> bool:
        return self._unbounded

    @property
    def pending(self) -> int:
        """Items requested and not yet delivered (``UNBOUNDED`` for an unlimited demand)."""
        return UNBOUNDED if self._unbounded else self._pending

    @property
    def invalid(self) -> ValueError | None:
        """The error of the first ``request(n)`` with ``n <= 0``, if there was one."""
        return self._invalid

    def request(self, n: int) -> None:
        """Ask the producer for ``n`` more items.

        Returns normally whatever ``n`` is (Reactive Streams rule 3.16). A count below 1 is the subscriber's
        mistake: it is told through ``on_error``, with an error naming ``n``, and its subscription ends
        (rule 3.9; :class:`Flowable` does this for every producer, see :meth:`on_invalid`).
        """
        if n <= 0:
            self._reject(n)
            return
        if not self._unbounded:
            with self._lock:
                self._pending = min(UNBOUNDED, self._pending + n)
        for listener in list(self._listeners):
            listener()

    def take(self, n: int) -> int:
        """Claim up to ``n`` of the pending requests for items about to be emitted; returns how many."""
        if self._unbounded:
            return n
        with self._lock:
            granted = min(n, self._pending)
            self._pending -= granted
            return granted

    def withdraw(self, n: int) -> int:
        """Take back up to ``n`` requests the producer has not served yet; returns how many.

        A demand-aware operator withdraws what it no longer has room for (the rest of a batch its timer
        closed early), so the producer does not send items nobody is ready for. Items the producer already
        claimed with :meth:`take` still arrive. Listeners are told, as after a request, so a pass-through
        stage can withdraw from its own upstream in turn.
        """
        if self._unbounded or n <= 0:
            return 0
        with self._lock:
            withdrawn = min(n, self._pending)
            self._pending -= withdrawn
        if withdrawn:
            for listener in list(self._listeners):
                listener()
        return withdrawn

    def _reject(self, n: int) -> None:
        with self._lock:
            first = self._invalid is None
            if first:
                self._invalid = ValueError(
                    f"request(n) needs n >= 1 (got {n}); ask for at least one item (Reactive Streams rule 3.9)"
                )
            error = self._invalid
        if first and error is not None:
            for listener in list(self._invalid_listeners):
                listener(error)

    def on_invalid(self, listener: Callable[[ValueError], None]) -> abc.DisposableBase:
        """Call ``listener`` with the error of the first ``request(n <= 0)``; dispose the result to stop."""
        self._invalid_listeners.append(listener)

        def remove() -> None:
            if listener in self._invalid_listeners:
                self._invalid_listeners.remove(listener)

        return Disposable(remove)

    def on_request(self, listener: Callable[[], None]) -> abc.DisposableBase:
        """Call ``listener`` after every :meth:`request` (and :meth:`withdraw`); dispose the result to stop."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return Disposable(remove)


def serialize(step: Callable[[], None]) -> Callable[[], None]:
    """Make ``step`` run one call at a time however it is called: from several threads, or from inside itself.

    A call that arrives while ``step`` runs is remembered, and ``step`` runs once more after it (Reactive
    Streams' work-in-progress counter), so no signal is lost and the stack never grows with reentrant calls.
    """
    lock = threading.Lock()
    wip = 0

    def run() -> None:
        nonlocal wip
        with lock:
            wip += 1
            if wip > 1:
                return
        missed = 1
        while True:
            step()
            with lock:
                wip -= missed
                missed = wip
                if missed == 0:
                    return

    return run


class StreamEnd:
    """Whether a demand-aware operator's output has ended, and the error it is to end with; read and changed
    under the operator's lock.

    :func:`drain_loop` opens every round with it: once ``stopped`` (completed, failed or disposed), nothing more
    is sent downstream or asked of upstream; a failure recorded with :meth:`fail` is sent before anything else
    waiting, and stops the stream.
    """

    __slots__ = ("failure", "stopped")

    def __init__(self) -> None:
        self.stopped = False
        self.failure: Exception | None = None

    def fail(self, error: Exception) -> None:
        """Record ``error`` for the next round of the drain to send; the first recorded is the one sent."""
        if self.failure is None:
            self.failure = error


def drain_loop(
    lock: threading.Lock,
    next_signal: Callable[[], Callable[[], None] | None],
    request_more: Callable[[], int],
    upstream: Demand,
    end: StreamEnd,
    observer: abc.ObserverBase[Any],
) -> Callable[[], None]:
    """The drain of a demand-aware operator: under ``lock``, pick the next signal to send downstream and how
    much more to request upstream; send both outside the lock; repeat until there is nothing to do.

    Each round opens with ``end``: once stopped, nothing is sent or requested; a recorded failure goes to
    ``observer.on_error`` and stops the stream. Otherwise ``next_signal`` and ``request_more`` are called with
    ``lock`` held, and the signal runs without it. A negative ``request_more`` withdraws that many requests
    from upstream (:meth:`Demand.withdraw`).
    """

    def step() -> None:
        while True:
            with lock:
                signal: Callable[[], None] | None
                if end.stopped:
                    signal = None
                elif end.failure is not None:
                    end.stopped = True
                    signal = functools.partial(observer.on_error, end.failure)
                else:
                    signal = next_signal()
                wanted = 0 if end.stopped else request_more()
            if wanted > 0:
                upstream.request(wanted)
            elif wanted < 0:
                upstream.withdraw(-wanted)
            if signal is None:
                return
            signal()

    return serialize(step)


SubscribeWithDemand = Callable[[abc.ObserverBase[_T], Demand, abc.SchedulerBase | None], abc.DisposableBase]


class Flowable(Observable[_T]):
    """An Observable that honours request-n when subscribed with :meth:`subscribe_with_demand`.

    ``prompt`` marks a Flowable whose items must start as soon as they arrive: a throttle's tokens lapse after
    their hold, so a stage below must not buffer what it emits (``process`` then asks for no more than its free
    stages instead of reading ahead). Plain operators lifted onto a prompt Flowable stay prompt.
    """

    def __init__(self, subscribe: SubscribeWithDemand[_T], *, prompt: bool = False) -> None:
        super().__init__()
        self._subscribe_with_demand = subscribe
        self.prompt = prompt

    def _subscribe_core(
        self, observer: abc.ObserverBase[_T], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        return self._subscribe_with_demand(observer, Demand.unlimited(), scheduler)

    def subscribe_with_demand(
        self,
        observer: abc.ObserverBase[_T],
        demand: Demand,
        scheduler: abc.SchedulerBase | None = None,
    ) -> abc.DisposableBase:
        """Subscribe ``observer``, emitting no more items than ``demand`` has requested.

        Whatever the producer, a ``demand.request(n)`` with ``n <= 0`` reaches ``observer`` as ``on_error``
        (never between the halves of an ``on_next``) and cancels the subscription; an ``observer.on_next``
        that raises cancels it too, and the exception goes on to the producer's caller.
        """
        subscriber: _Subscriber[_T] = _Subscriber(observer)
        listener = demand.on_invalid(subscriber.reject)

        def cancel() -> None:
            subscriber.dispose()
            listener.dispose()

        subscription = Disposable(cancel)
        if demand.invalid is not None:
            subscriber.reject(demand.invalid)
            return subscription
        try:
            subscriber.subscription = self._subscribe_with_demand(subscriber, demand, scheduler)
        except Exception as exc:
            if not subscriber.fail(exc):
                raise
        return subscription

    def pipe(self, *operators: Callable[[Any], Any]) -> Any:
        """Compose operators left to right, keeping request-n across plain reactivex operators."""
        result: Observable[Any] = self
        for operator in operators:
            result = _lift(operator, result)
        return result


class ManyObserver(Observer[_T]):
    """An Observer that also takes several items in one call: ``on_next_all(items)`` is ``on_next`` of each
    item, in order, in one signal.

    A producer of this package that has several items ready at once (``request_n``, a fetch's batch) hands
    them to such a subscriber in one call, so each layer between the two is crossed once per batch instead of
    once per item; any other subscriber gets them one ``on_next`` at a time. The rules of ``on_next`` hold for
    the call as a whole: never more items than requested, in series with every other signal, and a subscriber
    that raises is cancelled (the items count as delivered).
    """

    def __init__(
        self,
        on_next: Callable[[_T], None],
        on_error: Callable[[Exception], None],
        on_completed: Callable[[], None],
        on_next_all: Callable[[list[_T]], None],
    ) -> None:
        super().__init__(on_next, on_error, on_completed)
        self._on_next_all = on_next_all

    def on_next_all(self, items: list[_T]) -> None:
        if not self.is_stopped:
            self._on_next_all(items)


class _Subscriber(AutoDetachObserver[_T]):
    """The observer a Flowable's producer signals: it delivers an invalid request's error in series with
    ``on_next`` (rule 1.3), and treats a subscriber that raises as one that cancelled (rule 2.13).

    ``_depth`` counts the ``on_next`` calls under way (more than one only when re-entered on the same thread);
    only the emitting thread writes it. A rejection sets ``_invalid`` first and reads ``_depth`` after, the
    emitter the other way round, so at least one of them sees the other and sends the error; ``_once`` makes
    it exactly one.
    """

    def __init__(self, observer: abc.ObserverBase[_T]) -> None:
        super().__init__(observer.on_next, observer.on_error, observer.on_completed)
        # A producer hands several items in one call only where this is set: the observer takes them so.
        self._many = observer.on_next_all if isinstance(observer, ManyObserver) else None
        self.on_next_all: Callable[[list[_T]], None] | None = (
            None if self._many is None else self._on_next_all
        )
        self._depth = 0
        self._invalid: ValueError | None = None
        self._once = threading.Lock()
        self._signalled = False

    def on_next(self, value: _T) -> None:
        self._deliver(self._on_next, value)

    def _on_next_all(self, values: list[_T]) -> None:
        # on_next for several items at once; only for a ManyObserver (see on_next_all).
        if self._many is not None:
            self._deliver(self._many, values)

    def _deliver(self, handler: Callable[[Any], None], value: Any) -> None:
        """One on_next signal (of one item or several): held back behind an invalid request's error, and a
        handler that raises cancels the subscription (rule 2.13)."""
        if self.is_stopped:
            return
        self._depth += 1
        try:
            if self._invalid is None:
                handler(value)
        except BaseException:
            self.dispose()
            raise
        finally:
            self._depth -= 1
        if self._invalid is not None and self._depth == 0:
            self._signal_invalid()

    def reject(self, error: ValueError) -> None:
        self._invalid = error
        if self._depth == 0:
            self._signal_invalid()

    def _signal_invalid(self) -> None:
        with self._once:
            if self._signalled or self._invalid is None:
                return
            self._signalled = True
        self.on_error(self._invalid)


def subscribe_upstream(
    source: Observable[_T],
    observer: abc.ObserverBase[_T],
    demand: Demand,
    scheduler: abc.SchedulerBase | None,
) -> abc.DisposableBase:
    """Subscribe to ``source`` with ``demand`` when it is a Flowable, the plain way otherwise."""
    if isinstance(source, Flowable):
        return source.subscribe_with_demand(observer, demand, scheduler)
    return source.subscribe(observer, scheduler=scheduler)


def _lift(operator: Callable[[Observable[_T]], Observable[_U]], upstream: Observable[_T]) -> Observable[_U]:
    if not isinstance(upstream, Flowable):
        return operator(upstream)
    applied = operator(upstream)
    if isinstance(applied, Flowable):
        return applied

    def subscribe(
        observer: abc.ObserverBase[_U], demand: Demand, scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        def subscribe_pinned(
            inner: abc.ObserverBase[_T], sch: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            return subscribe_upstream(upstream, inner, demand, sch or scheduler)

        pinned: Observable[_T] = Observable(subscribe_pinned)
        return operator(pinned).subscribe(observer, scheduler=scheduler)

    return Flowable(subscribe, prompt=upstream.prompt)


def is_prompt(source: Observable[Any]) -> bool:
    """Whether ``source``'s items must start as soon as they arrive (see :class:`Flowable`)."""
    return isinstance(source, Flowable) and source.prompt
