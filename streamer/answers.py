"""The answers of a session's last numbered batches, so that a batch sent again is answered as it was.

A client that lost its connection (or whose server died) sends again the batches it has no answer for. Those
the session had applied are not applied again (their `seq` is at or below the session's), and their answer is
this one, kept from the first time: the client sees every outlier once, whichever answer reached it. Only the
body is kept (indices and outliers, without the batch number, which belongs to each gRPC stream); most bodies
are empty (no outliers), and cost only their entry.
"""
from __future__ import annotations

import collections

import numpy as np

KEEP_BATCHES = 1024          # answers kept per session: more than any client keeps unanswered (Go: 64)
KEEP_BYTES = 4 * 1024 * 1024  # and at most this many bytes of them; the oldest go first


class Answers:
    """seq -> answer body for the last KEEP_BATCHES numbered batches (fewer if their bodies pass KEEP_BYTES).

    Only non-empty bodies are stored; the window of numbers covered is the deque's (its maxlen evicts in C),
    so the common batch, without outliers, costs one append.
    """

    __slots__ = ("_order", "_body", "_bytes")

    def __init__(self) -> None:
        self._order: collections.deque[int] = collections.deque(maxlen=KEEP_BATCHES)
        self._body: dict[int, bytes] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._order)

    def add(self, seq: int, body: bytes) -> None:
        """Keep the answer of batch `seq` (greater than every seq kept so far)."""
        order = self._order
        if len(order) == KEEP_BATCHES and self._body:
            self._drop(order[0])
        order.append(seq)
        if body:
            self._body[seq] = body
            self._bytes += len(body)
            while self._bytes > KEEP_BYTES:
                self._drop(order.popleft())

    def _drop(self, seq: int) -> None:
        body = self._body.pop(seq, None)
        if body is not None:
            self._bytes -= len(body)

    def get(self, seq: int) -> bytes | None:
        """The answer kept for `seq`, or None when it is no longer kept."""
        if not self._order or seq < self._order[0]:
            return None
        return self._body.get(seq, b"")

    def pack(self) -> bytes:
        """The kept answers as one blob for a snapshot: uint64 count, seqs, lengths, then the bodies."""
        seqs = list(self._order)
        bodies = [self._body.get(s, b"") for s in seqs]
        head = np.array([len(seqs)] + seqs + [len(b) for b in bodies], dtype="<u8")
        return head.tobytes() + b"".join(bodies)

    @classmethod
    def unpack(cls, blob: bytes) -> Answers:
        """What pack() wrote; ValueError if the blob is not that."""
        answers = cls()
        if not blob:
            return answers
        m = int(np.frombuffer(blob, dtype="<u8", count=1)[0]) if len(blob) >= 8 else -1
        if not 0 <= m <= KEEP_BATCHES or len(blob) < 8 * (1 + 2 * m):
            raise ValueError("the kept answers are damaged")
        head = np.frombuffer(blob, dtype="<u8", count=1 + 2 * m)
        seqs, lengths = head[1:1 + m].tolist(), head[1 + m:].tolist()
        p = 8 * (1 + 2 * m)
        if p + sum(lengths) != len(blob) or any(a >= b for a, b in zip(seqs, seqs[1:])):
            raise ValueError("the kept answers are damaged")
        for seq, n in zip(seqs, lengths):
            answers.add(seq, blob[p:p + n])
            p += n
        return answers
