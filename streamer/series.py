"""Series table: metric name bytes -> dense slot numbers (0, 1, 2, ...), with a limit on how many.

Interning a batch is all-or-nothing: if the batch would take the table past its limit, nothing is added.
"""
from __future__ import annotations

import numpy as np


class SeriesLimitError(Exception):
    """Interning a batch would exceed the table's series limit."""

    def __init__(self, index: int, limit: int):
        super().__init__(f"metric {index} would be series number {limit + 1}, over the limit of {limit} series")
        self.index = index
        self.limit = limit


class SeriesTable:
    """Names of the series seen so far, each with its slot in the state arrays."""

    def __init__(self, limit: int):
        self.limit = limit
        self._slots: dict[bytes, int] = {}
        self._names: list[bytes] = []

    def __len__(self) -> int:
        return len(self._names)

    def intern(self, buf: bytes, name_start: np.ndarray, name_len: np.ndarray) -> np.ndarray:
        """Slot of each name span in `buf`, adding new names; raise SeriesLimitError and add none if over."""
        view = memoryview(buf)
        ids = np.empty(len(name_start), dtype=np.int64)
        new: dict[bytes, int] = {}
        for i, (s, n) in enumerate(zip(name_start.tolist(), name_len.tolist())):
            key = bytes(view[s:s + n])
            slot = self._slots.get(key)
            if slot is None:
                slot = new.get(key)
                if slot is None:
                    slot = len(self._names) + len(new)
                    if slot >= self.limit:
                        raise SeriesLimitError(i, self.limit)
                    new[key] = slot
            ids[i] = slot
        self._slots.update(new)
        self._names.extend(new)
        return ids

    def name(self, slot: int) -> bytes:
        return self._names[slot]
