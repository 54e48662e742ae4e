"""The fused pass: one batch of a stream from request bytes to response bytes in one compiled call.

Decoding (wire/decode.py), interning (series.py), judging (kernels.py) and encoding (wire/encode.py) run as
phases of one numba function over one stream's reused buffers, so the Python per batch is the call, the error
mapping and the session bookkeeping (detector.py). benchmarks/results/profile-before.md shows why: at 1 000
metrics a batch the stages' Python wrappers, numba dispatch and numpy allocations cost about as much as the
compiled code. This module stands above the wire package and the series table, which know nothing of it.

Atomic as the separate stages are: every check (the wire format, name lengths, the series limit, options
or a session the stream's first request did not have) comes before any state is written; new names are
taken back from the table if a later metric is rejected. When the function needs room (more columns, a
bigger table or state, a longer answer) it returns, Python grows the arrays, and the call resumes where it
stopped. A batch that needs what this pass does not do (options or a session on a later request, an answer
that might exceed the limit) is answered None: the caller takes the stage-by-stage path.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from streamer import kernels
from streamer.series import SeriesLimitError, _intern
from streamer.wire import decode
from streamer.wire.encode import _encode
from streamer.wire.primitives import HASH_SEED

MAX_NAME_BYTES = 1024  # detector.MAX_NAME_BYTES is this one

# Bytes an answer can take per metric if every metric is flagged, besides the name's own bytes: the Outlier's
# tag and length (1 + 2: an Outlier is under 16 KiB), index (1 + 5), name tag and length (1 + 2: names are
# at most MAX_NAME_BYTES), four doubles (4 * 9), and its entry in the packed indices (5); per answer, the
# packed field's tag and length (1 + 5) and the batch number (1 + 10).
ANSWER_BYTES_PER_METRIC = 53
ANSWER_BYTES_FIXED = 17

# Slots of the pass's state array after the decoder's own (decode._STATE_SIZE of them).
_PHASE, _N, _I, _COUNT, _USED, _K, _SIZE, _WHY = range(decode._STATE_SIZE, decode._STATE_SIZE + 8)
_STATE_SIZE = decode._STATE_SIZE + 8

# What _stream_pass returns: done; or where it stopped (Python grows an array and calls again, or maps an
# error); negative: the decoder's error code.
DONE, FULL, SLOW, NAME_TOO_LONG, TABLE, STATE, OUT = range(7)
_DECODE, _INTERN, _JUDGE, _ENCODE = range(4)


@njit(nogil=True, cache=True)
def _stream_pass(b, cols, st, resume, seed, table_count, table_used, ids, table, shift, hashes, offsets, lengths, arena,
                 limit, hash_mask, count, mean, spread, exponential, alpha, threshold, warmup, exclude,
                 idx, mean_out, std_out, z_out, batch, out, max_answer):
    """Decode, intern, judge and encode one request of a stream; returns DONE or why it stopped (see above).

    cols: int64[5, capacity], the decoder's columns; st: int64[_STATE_SIZE], where the pass is (set up here
    when not `resume`; seed: HASH_SEED); ids, idx, mean_out, std_out, z_out: at least cols' capacity long.
    The table's arrays and (table_count, table_used) are those of a SeriesTable keyed with HASH_SEED; count,
    mean and spread the series state, updated in place; out receives the answer (st[_SIZE] bytes).
    """
    if not resume:
        st[:] = 0
        st[decode._SEED] = seed  # an argument: numba's cache would keep a global's value from another process
        st[_COUNT] = table_count
        st[_USED] = table_used
    if st[_PHASE] == _DECODE:
        code, n, has_options, has_session = decode._decode(b, cols, st)
        if code != 0:
            return FULL if code == decode._FULL else code
        bound = len(b) + ANSWER_BYTES_PER_METRIC * n + ANSWER_BYTES_FIXED  # detector._answer_bound
        if has_options or has_session or bound > max_answer:
            return SLOW
        for i in range(n):
            if cols[1, i] > MAX_NAME_BYTES:
                st[_I] = i
                return NAME_TOO_LONG
        st[_N] = n
        st[_PHASE] = _INTERN
    n = st[_N]
    if st[_PHASE] == _INTERN:
        why, i, c, used = _intern(b, cols[0, :n], cols[1, :n], cols[4, :n], st[_I], ids, table, shift, hashes,
                                  offsets, lengths, arena, st[_COUNT], st[_USED], limit, hash_mask)
        st[_I] = i
        st[_COUNT] = c
        st[_USED] = used
        if why != 0:
            st[_WHY] = why
            return TABLE
        st[_PHASE] = _JUDGE
    values = cols[2, :n].view(np.float64)
    if st[_PHASE] == _JUDGE:
        if st[_COUNT] > min(len(count), len(mean), len(spread)):
            return STATE
        if exponential:
            k = kernels.ewm_update(ids[:n], values, count, mean, spread, alpha, threshold, warmup, exclude,
                                   idx, mean_out, std_out, z_out)
        else:
            k = kernels.welford_update(ids[:n], values, count, mean, spread, threshold, warmup, exclude,
                                       idx, mean_out, std_out, z_out)
        st[_K] = k
        st[_PHASE] = _ENCODE
    k = st[_K]
    size = _encode(out, batch, idx[:k], idx[:k], ids, values, mean_out, std_out, z_out, arena, offsets, lengths)
    st[_SIZE] = size
    if size < 0:
        raise AssertionError("the fused pass flagged a row outside its batch")  # a bug: encode checked it
    return OUT if size > len(out) else DONE


class NameTooLong(ValueError):
    """A metric's name is over MAX_NAME_BYTES."""

    def __init__(self, index: int, length: int):
        super().__init__(f"metric {index}: name is {length} bytes, over the limit of {MAX_NAME_BYTES} bytes")
        self.index = index
        self.length = length


class StreamPass:
    """One stream's buffers for the fused pass (columns, slots, flagged rows, the answer), grown as batches
    grow and reused across its batches. Not thread-safe: one stream's batches run one at a time."""

    def __init__(self) -> None:
        self._st = np.zeros(_STATE_SIZE, dtype=np.int64)
        self._out = np.empty(4096, dtype=np.uint8)
        self._size(0)

    def _size(self, n: int) -> None:
        self._cols = np.empty((5, n), dtype=np.int64)
        self._ids = np.empty(n, dtype=np.int64)
        self._idx = np.empty(n, dtype=np.int32)
        self._mean, self._std, self._z = (np.empty(n, dtype=np.float64) for _ in range(3))

    def run(self, buf: bytes, state, exponential: bool, alpha: float, threshold: float, warmup: int,
            exclude: bool, batch: int, max_answer: int) -> bytes | None:
        """The answer to `buf` with `state` (a SeriesState) updated; None (nothing done) when the batch needs the
        stage-by-stage path. Raises WireError, NameTooLong or SeriesLimitError with state and table untouched."""
        b = buf if type(buf) is bytes else bytes(buf)  # one jitted signature (grpc hands over bytes)
        table = state.table
        if table._seed != HASH_SEED:
            return None
        if self._cols.shape[1] < len(b) // 24 + 4:  # room for metrics of 24 bytes or more, as decode_request
            self._size(max(len(b) // 24 + 4, 2 * self._cols.shape[1]))
        st, known, resume = self._st, len(table), False
        while True:
            why = _stream_pass(b, self._cols, st, resume, HASH_SEED, table._count, table._used, self._ids,
                               table._table, table._shift, table._hashes, table._offsets, table._lengths, table._arena,
                               table.limit, table._hash_mask, state.count, state.mean, state.spread, exponential,
                               alpha, threshold, warmup, exclude, self._idx, self._mean, self._std, self._z,
                               batch, self._out, max_answer)
            resume = True
            if why == DONE:
                table._count, table._used = int(st[_COUNT]), int(st[_USED])
                return self._out[:int(st[_SIZE])].tobytes()
            if why == FULL:  # smaller metrics than room was made for: twice the columns, the decoded ones kept
                cols = self._cols
                self._size(2 * cols.shape[1])
                self._cols[:, :cols.shape[1]] = cols
            elif why == TABLE:
                table._count, table._used = int(st[_COUNT]), int(st[_USED])
                if not table._grow(int(st[_WHY]), int(self._cols[1, st[_I]])):
                    table.truncate(known)
                    raise SeriesLimitError(int(st[_I]), table.limit)  # _intern checks spans: only the limit
            elif why == STATE:
                state.reserve(int(st[_COUNT]))
            elif why == OUT:
                self._out = np.empty(2 * int(st[_SIZE]), dtype=np.uint8)
            elif why == SLOW:
                return None
            elif why == NAME_TOO_LONG:
                i = int(st[_I])
                raise NameTooLong(i, int(self._cols[1, i]))
            else:
                raise decode.wire_error(st, why)


def compile_all() -> None:
    """Compile (or load from numba's cache) the fused pass in the argument types the detector gives it."""
    from streamer.state import SeriesState  # what run() is given; only needed here, so run() stays duck-typed

    metric = b"\x0a\x04\x08\x01\x10\x02\x12\x01a\x19" + bytes(8)
    request = b"\x0a" + bytes([len(metric)]) + metric
    for exponential in (False, True):
        state = SeriesState(2 if exponential else 1, 10, capacity=1)
        StreamPass().run(request * 3, state, exponential, 0.05, 2.0, 2, False, 1, 1 << 20)
