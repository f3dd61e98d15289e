"""Answers of chart reads, kept in the process while the patient's chart keeps its version.

A patient's app reads the same things again and again (the home screen's summary, the lab
list) while their chart changes a few times a day; every answer cost records several
queries, the rows' JSON decoded and the answer's JSON written again (py-spy, benchmark 4:
records was the busiest process). An answer is kept with the chart version it was computed
at (`store.chart_version`, new in every transaction that writes the chart) and given again
only while the version read at the request is the same one. The version is read before the
answer is computed, so a kept answer is never older than its version says (a write that
commits in between makes it newer, and the next read, at the new version, computes again).
Any number of replicas: each keeps its own answers, all checked against the same versions.
Bounded in bytes, each answer counted with its request and what keeping it costs (a
patient varying a query's parameters fills it with many small answers, not more memory);
the least recently used answers go first."""

from __future__ import annotations

from collections import OrderedDict

# What keeping one answer costs besides its bytes and its request's: the ordered dict's
# entry, the tuple, the int and the bytes and str objects' headers (CPython 3.11, rounded
# up).
ENTRY_OVERHEAD = 256


class ChartReads:
    """At most `max_bytes` of answers, each under its request (path and query)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._answers: OrderedDict[str, tuple[int, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, request: str, version: int) -> bytes | None:
        """The answer to `request` computed at chart version `version`, if kept."""
        kept = self._answers.get(request)
        if kept is None:
            return None
        if kept[0] != version:
            self._drop(request)
            return None
        self._answers.move_to_end(request)
        return kept[1]

    def put(self, request: str, version: int, answer: bytes) -> None:
        """Keep `answer` to `request` computed at `version` (one larger than the whole bound
        is not kept)."""
        self._drop(request)
        if _cost(request, answer) > self.max_bytes:
            return
        self._answers[request] = (version, answer)
        self.size += _cost(request, answer)
        while self.size > self.max_bytes:
            oldest = next(iter(self._answers))
            self._drop(oldest)

    def _drop(self, request: str) -> None:
        kept = self._answers.pop(request, None)
        if kept is not None:
            self.size -= _cost(request, kept[1])


def _cost(request: str, answer: bytes) -> int:
    return len(answer) + len(request) + ENTRY_OVERHEAD
