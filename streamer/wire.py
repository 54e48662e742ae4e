"""Request bytes -> columns, and flagged rows -> response bytes, in numba: no Python object per metric.

The decoder reads OutliersRequest exactly as the protobuf library (upb) does, which is its test oracle
(tests/test_wire.py): fields in any order; unknown fields of every wire type skipped, groups included
(matched end tags, upb's nesting limit of 100); a known field with the wrong wire type is an unknown field;
a scalar sent twice keeps the last; a sub-message sent twice (`options`, a metric's `time`) is merged;
absent fields are zero. Varints are at most 10 bytes (tags and lengths 5, tags below 2**32); `mode` is
kept as read (open enum), integers are truncated to their declared width as upb does. Names and `session`
must be UTF-8 (every occurrence, as upb checks each). Malformed bytes raise WireError; nothing reads out
of bounds (every read is checked against the end of its record first).

Deliberate differences from the protobuf library:
- `times` is seconds * 10**9 + nanos in int64, wrapping outside the years 1678-2262 (the library keeps
  the two fields; `time` is carried, not scored).
- Messages of 2 GiB or more are not rejected here (grpc's --max-message-mb stops them long before).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


class WireError(ValueError):
    """The bytes are not a valid OutliersRequest."""


@dataclasses.dataclass(frozen=True)
class Options:
    """DetectOptions as sent; zero fields mean "the server's default" (resolved in detector.py)."""

    threshold: float = 0.0
    warmup: int = 0
    mode: int = 0
    alpha: float = 0.0
    exclude_outliers: bool = False


@dataclasses.dataclass
class Columns:
    """One decoded OutliersRequest."""

    buf: bytes               # the request's bytes, which name_start / name_len point into
    name_start: np.ndarray   # int64[n]
    name_len: np.ndarray     # int64[n], bytes (the pipeline checks the 1024-byte limit on it)
    values: np.ndarray       # float64[n]
    times: np.ndarray        # int64[n], nanoseconds since the epoch (0 when absent)
    options: Options | None  # None when the request carries no options field
    session: str

    def __len__(self) -> int:
        return len(self.values)


# --- byte access -------------------------------------------------------------------------------------
# Unaligned 8-byte loads and stores, little-endian (every platform numba supports is). The callers check
# bounds: an intrinsic is a bare machine load.

def _byte_pointer(context, builder, aryty, ary, pos, posty, target):
    data = context.make_array(aryty)(context, builder, ary).data
    ptr = builder.gep(data, [context.cast(builder, pos, posty, types.intp)])
    return builder.bitcast(ptr, target.as_pointer())


@intrinsic
def load_i64(typingctx, arr, pos):
    """The 8 bytes at arr[pos] (uint8 array) as an int64, little-endian, unaligned."""
    sig = types.int64(arr, pos)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.IntType(64))
        return builder.load(ptr, align=1)
    return sig, codegen


@intrinsic
def _load_f64(typingctx, arr, pos):
    sig = types.float64(arr, pos)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.DoubleType())
        return builder.load(ptr, align=1)
    return sig, codegen


@intrinsic
def store_i64(typingctx, arr, pos, value):
    """Write int64 `value` to the 8 bytes at arr[pos] (uint8 array), little-endian, unaligned."""
    sig = types.void(arr, pos, value)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.IntType(64))
        builder.store(context.cast(builder, args[2], sig.args[2], types.int64), ptr, align=1)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _store_f64(typingctx, arr, pos, value):
    sig = types.void(arr, pos, types.float64)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.DoubleType())
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()
    return sig, codegen


@njit(nogil=True, cache=True)
def tail_word(b, p, k):
    """The k < 8 bytes at b[p:p+k] as the low bytes of an int64 (the rest zero), never reading past b."""
    if p + 8 <= len(b):
        return load_i64(b, p) & ((np.int64(1) << (8 * k)) - 1)
    w = np.int64(0)
    for j in range(k):
        w |= np.int64(b[p + j]) << (8 * j)
    return w


# --- decoding ----------------------------------------------------------------------------------------
# Helpers return the next position, or -code on error. Codes index _ERRORS.

_E_TRUNCATED = 1
_E_VARINT = 2
_E_TAG = 3
_E_WIRETYPE = 4
_E_GROUP = 5
_E_DEPTH = 6
_E_NAME_UTF8 = 7
_E_SESSION_UTF8 = 8
_ERRORS = {
    _E_TRUNCATED: "a record runs past the end of its message (truncated input or a bad length)",
    _E_VARINT: "a varint is too long (over 10 bytes; tags and lengths over 5)",
    _E_TAG: "a field number is 0 or a tag is over 32 bits",
    _E_WIRETYPE: "wire type 6 or 7, or an end-group tag with no open group",
    _E_GROUP: "a group is not closed by its own end-group tag",
    _E_DEPTH: "groups are nested deeper than 100 levels",
    _E_NAME_UTF8: "the metric's name is not valid UTF-8",
    _E_SESSION_UTF8: "session is not valid UTF-8",
}
_MAX_DEPTH = 100          # upb's default nesting limit; each sub-message and each group takes one level
_HIGH_BITS = np.int64(-0x7F7F7F7F7F7F7F80)  # 0x8080808080808080: the top bit of each byte
_NS = np.int64(1_000_000_000)


@njit(nogil=True, cache=True)
def _varint(b, p, end):
    """(value, next) of the varint at b[p], as int64 bits; at most 10 bytes, excess high bits dropped."""
    if p < end and b[p] < 0x80:
        return np.int64(b[p]), p + 1
    x = np.int64(0)
    for shift in range(0, 70, 7):
        if p >= end:
            return x, -_E_TRUNCATED
        c = np.int64(b[p])
        p += 1
        x |= (c & 0x7F) << shift
        if c < 0x80:
            return x, p
    return x, -_E_VARINT


@njit(nogil=True, cache=True)
def _varint32(b, p, end):
    """(value, next) of a tag or length varint at b[p]: upb reads these as at most 5 bytes."""
    if p < end and b[p] < 0x80:
        return np.int64(b[p]), p + 1
    x = np.int64(0)
    for shift in range(0, 35, 7):
        if p >= end:
            return x, -_E_TRUNCATED
        c = np.int64(b[p])
        p += 1
        x |= (c & 0x7F) << shift
        if c < 0x80:
            return x, p
    return x, -_E_VARINT


@njit(nogil=True, cache=True)
def _tag(b, p, end):
    """(field, wire type, next) of the tag at b[p]; next = -code if it is malformed (field 0 allowed)."""
    t, p = _varint32(b, p, end)
    if p >= 0 and t > 0xFFFFFFFF:
        p = -_E_TAG
    return t >> 3, t & 7, p


@njit(nogil=True, cache=True)
def _length(b, p, end):
    """(length, next) of a length-delimited record's length at b[p], checked against `end`."""
    n, p = _varint32(b, p, end)
    if p >= 0 and n > end - p:
        p = -_E_TRUNCATED
    return n, p


@njit(nogil=True, cache=True)
def _skip_scalar(b, p, end, wt):
    """Skip the value of wire type 0, 1, 2 or 5 at b[p]; -code for 6 and 7 (3 and 4 are the callers')."""
    if wt == 0:
        _, p = _varint(b, p, end)
        return p
    if wt == 1:
        return p + 8 if end - p >= 8 else -_E_TRUNCATED
    if wt == 2:
        n, p = _length(b, p, end)
        return p + n if p >= 0 else p
    if wt == 5:
        return p + 4 if end - p >= 4 else -_E_TRUNCATED
    return -_E_WIRETYPE


@njit(nogil=True, cache=True)
def _skip_group(b, p, end, field, depth):
    """Skip an unknown group whose start tag (field) precedes b[p]; `depth` = levels left in its message.

    As upb: the group must close with an end tag of its own field number before `end`, groups inside it
    nest with their own tags, field number 0 is tolerated inside (upb does not check it there), and the
    nesting counts against the same limit as sub-messages.
    """
    depth -= 1
    if depth < 0:
        return -_E_DEPTH
    open_fields = np.empty(depth + 1, np.int64)
    top = 0
    open_fields[0] = field
    while True:
        if p >= end:
            return -_E_GROUP
        f, wt, p = _tag(b, p, end)
        if p < 0:
            return p
        if wt == 4:
            if f != open_fields[top]:
                return -_E_GROUP
            if top == 0:
                return p
            top -= 1
            depth += 1
        elif wt == 3:
            depth -= 1
            if depth < 0:
                return -_E_DEPTH
            top += 1
            open_fields[top] = f
        else:
            p = _skip_scalar(b, p, end, wt)
            if p < 0:
                return p


@njit(nogil=True, cache=True)
def _skip(b, p, end, field, wt, depth):
    """Skip an unknown field's value at b[p] (its tag already read); `depth` = levels left here."""
    if wt == 3:
        return _skip_group(b, p, end, field, depth)
    if wt == 4:
        return -_E_WIRETYPE  # an end-group tag with no group open (messages here are never groups)
    return _skip_scalar(b, p, end, wt)


@njit(nogil=True, cache=True)
def utf8_valid(b, p, end):
    """Whether b[p:end] is well-formed UTF-8 (no overlongs, surrogates or code points over U+10FFFF)."""
    while p < end:
        # ASCII runs eight bytes at a time: names are mostly ASCII
        while end - p >= 8 and (load_i64(b, p) & _HIGH_BITS) == 0:
            p += 8
        if p >= end:
            break
        c = b[p]
        if c < 0x80:
            p += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        if c < 0xE0:
            if end - p < 2 or b[p + 1] & 0xC0 != 0x80:
                return False
            p += 2
            continue
        if c < 0xF0:
            if end - p < 3:
                return False
            c1 = b[p + 1]
            lo = 0xA0 if c == 0xE0 else 0x80
            hi = 0x9F if c == 0xED else 0xBF
            if c1 < lo or c1 > hi or b[p + 2] & 0xC0 != 0x80:
                return False
            p += 3
            continue
        if end - p < 4:
            return False
        c1 = b[p + 1]
        lo = 0x90 if c == 0xF0 else 0x80
        hi = 0x8F if c == 0xF4 else 0xBF
        if c1 < lo or c1 > hi or b[p + 2] & 0xC0 != 0x80 or b[p + 3] & 0xC0 != 0x80:
            return False
        p += 4
    return True


@njit(nogil=True, cache=True)
def _count_metrics(b):
    """(number of `metrics` records, 0), or (-code, error position): sizes the columns before filling them."""
    n = len(b)
    p = 0
    count = 0
    while p < n:
        start = p
        f, wt, p = _tag(b, p, n)
        if p >= 0:
            if f == 0:
                p = -_E_TAG
            else:
                if f == 1 and wt == 2:
                    count += 1
                p = _skip(b, p, n, f, wt, _MAX_DEPTH)
        if p < 0:
            return p, start
    return count, 0


@njit(nogil=True, cache=True)
def _decode_timestamp(b, p, end, seconds, nanos):
    """Merge the google.protobuf.Timestamp in b[p:end] into (seconds, nanos); returns (s, n, next)."""
    while p < end:
        f, wt, p = _tag(b, p, end)
        if p < 0:
            break
        if f == 1 and wt == 0:
            seconds, p = _varint(b, p, end)
        elif f == 2 and wt == 0:
            x, p = _varint(b, p, end)
            x &= 0xFFFFFFFF  # int32: upb keeps the low 32 bits
            nanos = x - 0x100000000 if x >= 0x80000000 else x
        elif f == 0:
            p = -_E_TAG
        else:
            p = _skip(b, p, end, f, wt, _MAX_DEPTH - 2)
        if p < 0:
            break
    return seconds, nanos, p


@njit(nogil=True, cache=True)
def _decode_options(b, p, end, info, finfo):
    """Merge the DetectOptions in b[p:end] into info[1:4] (warmup, mode, exclude) and finfo (threshold, alpha)."""
    while p < end:
        f, wt, p = _tag(b, p, end)
        if p < 0:
            break
        if wt == 1 and (f == 1 or f == 4):
            if end - p < 8:
                return -_E_TRUNCATED
            finfo[0 if f == 1 else 1] = _load_f64(b, p)
            p += 8
        elif wt == 0 and 2 <= f <= 5 and f != 4:
            x, p = _varint(b, p, end)
            if f == 2:
                info[1] = x & 0xFFFFFFFF  # uint32
            elif f == 3:
                x &= 0xFFFFFFFF  # enum Mode is int32; open, so any value is kept
                info[2] = x - 0x100000000 if x >= 0x80000000 else x
            else:
                info[3] = 1 if x != 0 else 0
        elif f == 0:
            p = -_E_TAG
        else:
            p = _skip(b, p, end, f, wt, _MAX_DEPTH - 1)
        if p < 0:
            break
    return p


@njit(nogil=True, cache=True)
def _decode(b, name_start, name_len, values, times, info, finfo):
    """Fill the columns (sized by _count_metrics) from the OutliersRequest in b.

    info: [has options, warmup, mode, exclude_outliers, session start, session length, error metric];
    finfo: [threshold, alpha]. Returns (0, 0) or (-code, error position).
    """
    n = len(b)
    p = 0
    i = 0
    while p < n:
        start = p
        f, wt, p = _tag(b, p, n)
        if p < 0:
            return p, start
        if f == 1 and wt == 2:
            size, p = _length(b, p, n)
            if p < 0:
                return p, start
            end = p + size
            ns = p
            nl = 0
            value = 0.0
            seconds = np.int64(0)
            nanos = np.int64(0)
            while p < end:
                field_start = p
                f, wt, p = _tag(b, p, end)
                if p < 0:
                    return p, field_start
                if f == 3 and wt == 1:
                    if end - p < 8:
                        return -_E_TRUNCATED, field_start
                    value = _load_f64(b, p)
                    p += 8
                elif f == 2 and wt == 2:
                    size, p = _length(b, p, end)
                    if p < 0:
                        return p, field_start
                    if not utf8_valid(b, p, p + size):
                        info[6] = i
                        return -_E_NAME_UTF8, field_start
                    ns = p
                    nl = size
                    p += size
                elif f == 1 and wt == 2:
                    size, p = _length(b, p, end)
                    if p < 0:
                        return p, field_start
                    seconds, nanos, p = _decode_timestamp(b, p, p + size, seconds, nanos)
                elif f == 0:
                    return -_E_TAG, field_start
                else:
                    p = _skip(b, p, end, f, wt, _MAX_DEPTH - 1)
                if p < 0:
                    return p, field_start
            name_start[i] = ns
            name_len[i] = nl
            values[i] = value
            times[i] = seconds * _NS + nanos  # wraps outside 1678-2262: see the module docstring
            i += 1
        elif f == 2 and wt == 2:
            size, p = _length(b, p, n)
            if p < 0:
                return p, start
            info[0] = 1
            p = _decode_options(b, p, p + size, info, finfo)
        elif f == 3 and wt == 2:
            size, p = _length(b, p, n)
            if p < 0:
                return p, start
            if not utf8_valid(b, p, p + size):
                return -_E_SESSION_UTF8, start
            info[4] = p
            info[5] = size
            p += size
        elif f == 0:
            return -_E_TAG, start
        else:
            p = _skip(b, p, n, f, wt, _MAX_DEPTH)
        if p < 0:
            return p, start
    return 0, 0


def decode_request(buf: bytes) -> Columns:
    """Decode an OutliersRequest; raise WireError on bytes the protobuf library would reject."""
    b = np.frombuffer(buf, dtype=np.uint8)
    count, where = _count_metrics(b)
    if count < 0:
        raise WireError(f"request is not a valid OutliersRequest: at byte {where}: {_ERRORS[-count]}")
    name_start = np.empty(count, dtype=np.int64)
    name_len = np.empty(count, dtype=np.int64)
    values = np.empty(count, dtype=np.float64)
    times = np.empty(count, dtype=np.int64)
    info = np.zeros(7, dtype=np.int64)
    finfo = np.zeros(2, dtype=np.float64)
    code, where = _decode(b, name_start, name_len, values, times, info, finfo)
    if code < 0:
        what = f"metric {info[6]}: " if code == -_E_NAME_UTF8 else f"at byte {where}: "
        raise WireError(f"request is not a valid OutliersRequest: {what}{_ERRORS[-code]}")
    options = None
    if info[0]:
        options = Options(float(finfo[0]), int(info[1]), int(info[2]), float(finfo[1]), bool(info[3]))
    session = bytes(buf[info[4]:info[4] + info[5]]).decode() if info[5] else ""
    return Columns(buf, name_start, name_len, values, times, options, session)


# --- encoding ----------------------------------------------------------------------------------------
# OutliersResponse as upb serializes it: fields in number order, zero scalars omitted (a double is zero
# only when all its bits are: -0.0 is written), indices packed.

@njit(nogil=True, cache=True)
def _varint_size(x):
    if x < 0:
        return 10
    size = 1
    while x >= 0x80:
        x >>= 7
        size += 1
    return size


@njit(nogil=True, cache=True)
def _put_varint(out, p, x):
    """Write int64 x as a varint (negative ones as 10 bytes, as int32/int64 fields are) at out[p]."""
    for _ in range(10):
        low = x & 0x7F
        x = (x >> 7) & 0x01FFFFFFFFFFFFFF  # logical shift
        if x == 0:
            out[p] = low
            return p + 1
        out[p] = low | 0x80
        p += 1
    return p


@njit(nogil=True, cache=True)
def _double_size(x):
    return 0 if x == 0.0 and not np.signbit(x) else 9


@njit(nogil=True, cache=True)
def _put_double(out, p, tag, x):
    if x == 0.0 and not np.signbit(x):
        return p
    out[p] = tag
    _store_f64(out, p + 1, x)
    return p + 9


@njit(nogil=True, cache=True)
def _outlier_size(index, name_len, value, mean, std, z):
    size = 0
    if index != 0:
        size += 1 + _varint_size(index)
    if name_len:
        size += 1 + _varint_size(name_len) + name_len
    return size + _double_size(value) + _double_size(mean) + _double_size(std) + _double_size(z)


@njit(nogil=True, cache=True)
def _encode(batch, index, rows, ids, values, mean, std, z, arena, name_off, name_len):
    """OutliersResponse bytes (uint8 array) for flagged batch positions `index` (int32[k], ascending).

    Outlier j has series s = ids[rows[j]] and value values[rows[j]], name arena[name_off[s]:][:name_len[s]],
    and mean[j], std[j], z[j].
    """
    k = len(index)
    packed = 0
    for j in range(k):
        packed += _varint_size(np.int64(index[j]))
    size = 0
    if k:
        size += 1 + _varint_size(packed) + packed
    for j in range(k):
        r = rows[j]
        sub = _outlier_size(np.int64(index[j]), name_len[ids[r]], values[r], mean[j], std[j], z[j])
        size += 1 + _varint_size(sub) + sub
    if batch != 0:
        size += 1 + _varint_size(batch)
    out = np.empty(size, dtype=np.uint8)
    p = 0
    if k:
        out[0] = 0x0A  # field 1, length-delimited: packed indices
        p = _put_varint(out, 1, packed)
        for j in range(k):
            p = _put_varint(out, p, np.int64(index[j]))
    for j in range(k):
        i = np.int64(index[j])
        r = rows[j]
        s = ids[r]
        nl = name_len[s]
        out[p] = 0x12  # field 2: an Outlier
        p = _put_varint(out, p + 1, _outlier_size(i, nl, values[r], mean[j], std[j], z[j]))
        if i != 0:
            out[p] = 0x08
            p = _put_varint(out, p + 1, i)
        if nl:
            out[p] = 0x12
            p = _put_varint(out, p + 1, nl)
            off = name_off[s]
            for c in range(nl):
                out[p + c] = arena[off + c]
            p += nl
        p = _put_double(out, p, 0x19, values[r])
        p = _put_double(out, p, 0x21, mean[j])
        p = _put_double(out, p, 0x29, std[j])
        p = _put_double(out, p, 0x31, z[j])
    if batch != 0:
        out[p] = 0x18
        p = _put_varint(out, p + 1, batch)
    return out


def encode_flagged(batch: int, index: np.ndarray, ids: np.ndarray, values: np.ndarray, mean: np.ndarray,
                   std: np.ndarray, z: np.ndarray, table) -> bytes:
    """Encode an OutliersResponse for flagged positions `index` of a batch whose columns are ids and values.

    index: int32[k] ascending positions in the batch; ids: int64[n] series slots in `table` (a SeriesTable);
    values: float64[n]; mean, std, z: float64, aligned with index (only the first k are read).
    """
    k = len(index)
    arena, name_off, name_len = table.name_arrays()
    return _encode(np.int64(batch), index, index, ids, values, mean[:k], std[:k], z[:k],
                   arena, name_off, name_len).tobytes()


def encode_response(batch: int, index: np.ndarray, names: list[bytes], values: np.ndarray,
                    mean: np.ndarray, std: np.ndarray, z: np.ndarray) -> bytes:
    """Encode an OutliersResponse: `index` ascending, the other columns aligned with it."""
    k = len(index)
    name_len = np.fromiter(map(len, names), dtype=np.int64, count=k)
    name_off = np.zeros(k, dtype=np.int64)
    np.cumsum(name_len[:-1], out=name_off[1:])
    arena = np.frombuffer(bytearray(b"".join(names)), dtype=np.uint8)  # writable, as a table's: one signature
    rows = np.arange(k, dtype=np.int64)
    return _encode(np.int64(batch), np.asarray(index, dtype=np.int32), rows, rows,
                   np.asarray(values, dtype=np.float64), np.asarray(mean, dtype=np.float64),
                   np.asarray(std, dtype=np.float64), np.asarray(z, dtype=np.float64),
                   arena, name_off, name_len).tobytes()


def compile_all() -> None:
    """Compile (or load from numba's cache) every jitted function of the wire path, series table included.

    Call once at server start, before reporting SERVING: the first request then pays no compile time.
    """
    from streamer.series import SeriesLimitError, SeriesTable  # series imports this module's byte helpers

    metric = b"\x0a\x04\x08\x01\x10\x02\x12\x01a\x19" + bytes(8)
    request = (b"\x0a" + bytes([len(metric)]) + metric + b"\x12\x02\x28\x01\x1a\x01s"
               + b"\x4b\x08\x01\x4c")  # a metric with a time, options, session, an unknown group
    cols = decode_request(request)
    for bad in (request[:-3], b"\x00"):
        try:
            decode_request(bad)
        except WireError:
            pass
    table = SeriesTable(limit=1, capacity=1)
    ids = table.intern(cols.buf, cols.name_start, cols.name_len)
    try:
        table.intern(b"ab", np.array([0, 1], dtype=np.int64), np.array([1, 1], dtype=np.int64))
    except SeriesLimitError:
        pass
    flags = np.zeros(1, dtype=np.float64)
    encode_flagged(1, np.zeros(1, dtype=np.int32), ids, cols.values, flags, flags, flags, table)
    encode_response(1, np.zeros(1, dtype=np.int32), [b"a"], flags, flags, flags, flags)
