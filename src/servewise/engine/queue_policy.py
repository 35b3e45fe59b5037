"""Waiting-queue order as policy objects behind one small interface."""

from __future__ import annotations

import abc
import math
import time
from collections import deque
from collections.abc import Callable, Iterator

from servewise.engine.request import Request


class RequestQueue(abc.ABC):
    """Requests waiting for admission, in the order the scheduler should try them."""

    # With every seat (max_num_seqs) taken, may a waiting request of a more urgent class
    # preempt the least urgent running one? (Scheduler._give_seat_to)
    preempts_for_seats: bool = False

    @abc.abstractmethod
    def push(self, request: Request) -> None:
        """A new request."""

    @abc.abstractmethod
    def push_front(self, request: Request) -> None:
        """A preempted request: it goes ahead of requests of the same rank."""

    @abc.abstractmethod
    def peek(self) -> Request:
        """The next request to admit (queue must not be empty)."""

    @abc.abstractmethod
    def pop(self) -> Request:
        """Remove and return ``peek()``."""

    @abc.abstractmethod
    def remove(self, request: Request) -> None:
        """Drop a request (aborted while waiting)."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Request]:
        """In admission order."""

    @abc.abstractmethod
    def order_running(self, running: list[Request]) -> None:
        """Sort the running list in place, most urgent first: the scheduler serves it in this
        order and preempts from its end."""


class FCFSQueue(RequestQueue):
    """First come, first served; preempted requests resume first."""

    def __init__(self) -> None:
        self._queue: deque[Request] = deque()

    def push(self, request: Request) -> None:
        self._queue.append(request)

    def push_front(self, request: Request) -> None:
        self._queue.appendleft(request)

    def peek(self) -> Request:
        return self._queue[0]

    def pop(self) -> Request:
        return self._queue.popleft()

    def remove(self, request: Request) -> None:
        self._queue.remove(request)

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._queue)

    def order_running(self, running: list[Request]) -> None:
        return  # admission order already is arrival order: the newest is preempted first


class PriorityQueue(RequestQueue):
    """SLO classes: lower ``priority`` first, then earliest deadline, then arrival.

    Aging keeps every class moving: a request whose deadline (its TTFT target) has
    passed competes as the most urgent class, by deadline. Interactive requests go
    ahead of batch ones that are still on time; a batch request that waited past its
    own (longer) target is served before newer interactive ones. Preempted requests
    lead their rank. Keys depend on the time, so the order is computed when the
    scheduler walks the queue (a few hundred waiting requests at most, under admission).
    """

    preempts_for_seats = True

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._items: list[tuple[int, Request]] = []  # (0 = preempted, 1 = new), request
        self._clock = clock

    def _ordered(self) -> list[tuple[int, Request]]:
        now = self._clock()

        def key(item: tuple[int, Request]) -> tuple[int, float, int, float]:
            tier, r = item
            deadline = r.deadline_s if r.deadline_s is not None else math.inf
            rank = 0 if deadline <= now else r.priority
            return rank, deadline, tier, r.timings.arrival_s

        return sorted(self._items, key=key)

    def push(self, request: Request) -> None:
        self._items.append((1, request))

    def push_front(self, request: Request) -> None:
        self._items.append((0, request))

    def peek(self) -> Request:
        return self._ordered()[0][1]

    def pop(self) -> Request:
        item = self._ordered()[0]
        self._items.remove(item)
        return item[1]

    def remove(self, request: Request) -> None:
        self._items = [item for item in self._items if item[1] is not request]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Request]:
        return iter([r for _, r in self._ordered()])

    def order_running(self, running: list[Request]) -> None:
        running.sort(key=lambda r: (r.priority, r.timings.arrival_s))


# policy name -> a factory taking the clock deadlines are compared with
QUEUE_POLICIES: dict[str, Callable[[Callable[[], float]], RequestQueue]] = {
    "fcfs": lambda clock: FCFSQueue(), "priority": PriorityQueue}


def create_queue(policy: str, clock: Callable[[], float] = time.monotonic) -> RequestQueue:
    """``clock``: the engine's monotonic time, or the planner's simulated one."""
    try:
        factory = QUEUE_POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown queue policy {policy!r}; choose from {sorted(QUEUE_POLICIES)}") from None
    return factory(clock)
