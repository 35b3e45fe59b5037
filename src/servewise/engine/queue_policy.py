"""Waiting-queue order as policy objects behind one small interface."""

from __future__ import annotations

import abc
import heapq
import itertools
from collections import deque
from collections.abc import Iterator

from servewise.engine.request import Request


class RequestQueue(abc.ABC):
    """Requests waiting for admission, in the order the scheduler should try them."""

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
    """Lower ``priority`` first, then earliest deadline, then arrival; preempted ones lead their rank.

    Used for SLO classes: interactive requests (priority 0) go before batch ones, and
    a batch request is only preempted in favour of a more urgent class.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, int, Request]] = []
        self._counter = itertools.count()
        self._removed: set[int] = set()  # id() of lazily deleted entries

    def _key(self, request: Request, front: bool) -> tuple[int, float, int, int, Request]:
        deadline = request.deadline_s if request.deadline_s is not None else float("inf")
        return (request.priority, deadline, 0 if front else 1, next(self._counter), request)

    def push(self, request: Request) -> None:
        self._removed.discard(id(request))
        heapq.heappush(self._heap, self._key(request, front=False))

    def push_front(self, request: Request) -> None:
        self._removed.discard(id(request))
        heapq.heappush(self._heap, self._key(request, front=True))

    def _prune(self) -> None:
        while self._heap and id(self._heap[0][-1]) in self._removed:
            self._removed.discard(id(heapq.heappop(self._heap)[-1]))

    def peek(self) -> Request:
        self._prune()
        return self._heap[0][-1]

    def pop(self) -> Request:
        self._prune()
        return heapq.heappop(self._heap)[-1]

    def remove(self, request: Request) -> None:
        self._removed.add(id(request))

    def __len__(self) -> int:
        return len(self._heap) - len(self._removed)

    def __iter__(self) -> Iterator[Request]:
        return (entry[-1] for entry in sorted(self._heap) if id(entry[-1]) not in self._removed)

    def order_running(self, running: list[Request]) -> None:
        running.sort(key=lambda r: (r.priority, r.deadline_s if r.deadline_s is not None else float("inf"),
                                    r.timings.arrival_s))


QUEUE_POLICIES: dict[str, type[RequestQueue]] = {"fcfs": FCFSQueue, "priority": PriorityQueue}


def create_queue(policy: str) -> RequestQueue:
    try:
        return QUEUE_POLICIES[policy]()
    except KeyError:
        raise ValueError(f"unknown queue policy {policy!r}; choose from {sorted(QUEUE_POLICIES)}") from None
