"""SeriesSummary: a whole run's loss or learning-rate curve in a fixed amount of memory.

A run may log millions of steps; the dashboard must show all of them in 60 columns and
must not keep them. The summary holds `capacity` bins of equal width in steps, each
with count, sum, min and max. When a step falls past the last bin, neighbouring bins are
merged pairwise and the bin width doubles, so memory stays at `capacity` bins whatever
the run length while every step still counts in some bin (a multi-resolution summary:
early in a run one bin is one step, late in a million-step run one bin is 2048 steps).

`columns(width)` then folds the bins into at most `width` columns of min/mean/max for a
sparkline or a plot. Non-finite values (NaN loss) are counted, never averaged in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from engine.run.events import as_float

DEFAULT_CAPACITY = 512
_INF = math.inf


@dataclass(frozen=True)
class Columns:
    """One row of display columns: x range covered and min/mean/max per column.

    A column with no finite value has None in low/mean/high and True in `bad` if it saw a
    non-finite value there.
    """

    x_first: int
    x_last: int
    low: list[float | None]
    mean: list[float | None]
    high: list[float | None]
    bad: list[bool]

    def __len__(self) -> int:
        return len(self.mean)


class SeriesSummary:
    """Min/mean/max of one series over the whole run, in at most `capacity` bins."""

    __slots__ = ("capacity", "bin_width", "_count", "_total", "_low", "_high", "_bad",
                 "first_bin", "last_bin", "count", "nonfinite", "last", "last_x", "max_x", "low", "high")

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        if capacity < 2 or capacity % 2:
            raise ValueError("capacity must be an even number >= 2")
        self.capacity = capacity
        self.bin_width = 1
        self._count = [0] * capacity
        self._total = [0.0] * capacity
        self._low = [_INF] * capacity
        self._high = [-_INF] * capacity
        self._bad = [False] * capacity
        self.first_bin: int | None = None
        self.last_bin = -1
        self.count = 0  # finite values seen
        self.nonfinite = 0
        self.last: float | None = None
        self.last_x: int | None = None
        self.max_x = -1
        self.low = _INF
        self.high = -_INF

    def add(self, x: int, value: float) -> None:
        """Record `value` at step (or epoch) `x` (x >= 0)."""
        if x < 0:
            x = 0
        index = x // self.bin_width
        while index >= self.capacity:
            self._halve()
            index = x // self.bin_width
        self.last = value
        self.last_x = x
        if x > self.max_x:
            self.max_x = x
        if self.first_bin is None or index < self.first_bin:
            self.first_bin = index
        if index > self.last_bin:
            self.last_bin = index
        if value != value or value in (_INF, -_INF):  # NaN or infinite
            self.nonfinite += 1
            self._bad[index] = True
            return
        self.count += 1
        self._count[index] += 1
        self._total[index] += value
        if value < self._low[index]:
            self._low[index] = value
        if value > self._high[index]:
            self._high[index] = value
        if value < self.low:
            self.low = value
        if value > self.high:
            self.high = value

    def extend(self, xs: list[int], values: list) -> None:
        """`add` for a batch (replaying history): same result, a fraction of the time.

        Values may be None (skipped), numbers, or the strings "nan"/"inf" of events.
        """
        if not xs:
            return
        top = max(xs)
        while top // self.bin_width >= self.capacity:
            self._halve()  # merging early is exact: a bin's stats merge associatively
        width = self.bin_width
        count, total, low, high, bad = self._count, self._total, self._low, self._high, self._bad
        first, last = self.capacity, -1
        added = nonfinite = 0
        last_value = last_x = None
        for x, value in zip(xs, values):
            if value is None:
                continue
            if type(value) is not float:
                value = as_float(value)
                if value is None:
                    continue
            index = x // width if x > 0 else 0
            if index < first:
                first = index
            if index > last:
                last = index
            last_value, last_x = value, x
            if value - value != 0.0:  # NaN or infinite
                nonfinite += 1
                bad[index] = True
                continue
            added += 1
            count[index] += 1
            total[index] += value
            if value < low[index]:
                low[index] = value
            if value > high[index]:
                high[index] = value
        if last_x is None:
            return
        self.count += added
        self.nonfinite += nonfinite
        self.last, self.last_x = last_value, max(0, last_x)
        self.max_x = max(self.max_x, max(xs))
        self.first_bin = first if self.first_bin is None else min(first, self.first_bin)
        self.last_bin = max(last, self.last_bin)
        if added:
            self.low = min(self.low, min(low[first:last + 1]))
            self.high = max(self.high, max(high[first:last + 1]))

    def _halve(self) -> None:
        """Merge bins pairwise: half the resolution, twice the span, same memory."""
        half = self.capacity // 2
        count, total, low, high, bad = self._count, self._total, self._low, self._high, self._bad
        for i in range(half):
            a, b = 2 * i, 2 * i + 1
            count[i] = count[a] + count[b]
            total[i] = total[a] + total[b]
            low[i] = low[a] if low[a] < low[b] else low[b]
            high[i] = high[a] if high[a] > high[b] else high[b]
            bad[i] = bad[a] or bad[b]
        for i in range(half, self.capacity):
            count[i] = 0
            total[i] = 0.0
            low[i] = _INF
            high[i] = -_INF
            bad[i] = False
        self.bin_width *= 2
        if self.first_bin is not None:
            self.first_bin //= 2
        self.last_bin //= 2

    def copy(self) -> "SeriesSummary":
        """An independent copy (the tailer thread keeps folding into the original)."""
        other = SeriesSummary.__new__(SeriesSummary)
        for name in SeriesSummary.__slots__:
            value = getattr(self, name)
            setattr(other, name, value[:] if isinstance(value, list) else value)
        return other

    @property
    def empty(self) -> bool:
        return self.first_bin is None

    @property
    def mean(self) -> float | None:
        if not self.count:
            return None
        return sum(self._total[self.first_bin:self.last_bin + 1]) / self.count

    def columns(self, width: int) -> Columns:
        """The used bins folded into at most `width` columns (fewer when the run is short)."""
        if self.first_bin is None or width <= 0:
            return Columns(0, 0, [], [], [], [])
        first, last = self.first_bin, self.last_bin
        used = last - first + 1
        width = min(width, used)
        low: list[float | None] = []
        mean: list[float | None] = []
        high: list[float | None] = []
        bad: list[bool] = []
        for column in range(width):
            start = first + column * used // width
            stop = first + (column + 1) * used // width
            count = sum(self._count[start:stop])
            bad.append(any(self._bad[start:stop]))
            if count:
                low.append(min(self._low[start:stop]))
                high.append(max(self._high[start:stop]))
                mean.append(sum(self._total[start:stop]) / count)
            else:
                low.append(None)
                high.append(None)
                mean.append(None)
        x_first = first * self.bin_width
        return Columns(x_first, max(x_first, self.max_x), low, mean, high, bad)
