"""The wire package's build and its loads: unaligned loads and stores on byte arrays, in three builds.

Chosen when this module is imported (it is the first of the package's modules to be, via primitives.py):
- normal: bare machine loads (numba intrinsics); every caller checks its bounds first;
- checked (STREAMER_WIRE_CHECKED=1): every load checks its bounds and every decoder loop its progress,
  raising WireBug with the load or loop and the position. numba's cache key does not see this switch, so
  the checked build compiles into its own cache directory (jit_cache.py): checked and normal code never mix;
- pure Python (NUMBA_DISABLE_JIT=1): plain-Python twins of the loads, always checked, so coverage tools and
  the fuzzer (tests/fuzz/) see every branch of the decoder.
Split from primitives.py along this seam (the build, and what differs between builds); use it through there.
"""
from __future__ import annotations

import struct

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from streamer import jit_cache  # first: it sets numba's cache directory, before the first @njit below

JIT = not numba.config.DISABLE_JIT
CHECKED = jit_cache.CHECKED  # STREAMER_WIRE_CHECKED=1, or no JIT


# Hot-path functions never allocate (the Python wrappers hand them every array) and are compiled without
# numba's reference counting (_nrt=False, a numba-internal option): with it, each inlined helper taking the
# byte array adds an atomic incref/decref pair per call, which measured 4-5x slower decoding (12 vs 2.3 ns
# per metric to scan a request). The checked build keeps it: raising an exception with the position needs it.
HOT = dict(nogil=True, cache=True) if CHECKED else dict(nogil=True, cache=True, _nrt=False)
INLINE = dict(HOT, inline="always")


class WireBug(IndexError):
    """Checked build only: a load outside its buffer, or a decoder loop that did not consume a byte.

    Never raised by correct code on any input: it marks a bug in this package (see tests/test_wire_checked.py).
    Args: (what, position, size or start).
    """


# --- loads and stores --------------------------------------------------------------------------------
# Unaligned 8-byte loads and stores, little-endian (every platform numba supports is).

def _byte_pointer(context, builder, aryty, ary, pos, posty, target):
    data = context.make_array(aryty)(context, builder, ary).data
    ptr = builder.gep(data, [context.cast(builder, pos, posty, types.intp)])
    return builder.bitcast(ptr, target.as_pointer())


@intrinsic
def _raw_at(typingctx, arr, pos):
    """arr[pos] without numba's negative-index wraparound (3 instructions a load)."""
    sig = arr.dtype(arr, pos)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.load(builder.gep(data, [context.cast(builder, args[1], sig.args[1], types.intp)]))
    return sig, codegen


@intrinsic
def _raw_byte(typingctx, arr, pos):
    """arr[pos] (uint8) as an int64, without numba's negative-index wraparound."""
    sig = types.int64(arr, pos)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.IntType(8))
        return builder.zext(builder.load(ptr), ir.IntType(64))
    return sig, codegen


@intrinsic
def _raw_load_i64(typingctx, arr, pos):
    """The 8 bytes at arr[pos] (uint8 array) as an int64, little-endian, unaligned."""
    sig = types.int64(arr, pos)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.IntType(64))
        return builder.load(ptr, align=1)
    return sig, codegen


@intrinsic
def _raw_load_f64(typingctx, arr, pos):
    sig = types.float64(arr, pos)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.DoubleType())
        return builder.load(ptr, align=1)
    return sig, codegen


@intrinsic
def _raw_store_f64(typingctx, arr, pos, value):
    sig = types.void(arr, pos, types.float64)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.DoubleType())
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _raw_store_i64(typingctx, arr, pos, value):
    sig = types.void(arr, pos, types.int64)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.IntType(64))
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _raw_f64_bits(typingctx, x):
    """The bits of float64 x as an int64 (to keep doubles in an int64 array)."""
    sig = types.int64(types.float64)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return sig, codegen


@intrinsic
def _raw_trailing_zeros(typingctx, x):
    """Count of trailing zero bits of int64 x, which must not be 0 (a single tzcnt/bsf)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))
    return sig, codegen


def _target_has_fast_pext() -> bool:
    """Whether the CPU numba compiles for (the host's, or NUMBA_CPU_NAME / NUMBA_CPU_FEATURES: numba's cache is
    keyed by these, so code with and without pext never mixes) has BMI2's pext at native speed: AMD before Zen 3
    runs it in microcode, tens to hundreds of cycles."""
    import llvmlite.binding as ll

    name = numba.config.CPU_NAME or ll.get_host_cpu_name()
    features = numba.config.CPU_FEATURES
    if features is None:
        features = ll.get_host_cpu_features().flatten()
    return "+bmi2" in features.split(",") and not name.startswith(("znver1", "znver2", "bdver"))


# Whether primitives.py packs varints with pext; it uses shifts and masks elsewhere, and never compiles a call to
# pext there (nor does the pure-Python build, which has no twin of it).
PEXT = JIT and _target_has_fast_pext()


@intrinsic
def pext(typingctx, x, mask):
    """pext(x, mask): the bits of int64 x under mask, packed to the low end (BMI2); only where PEXT is true."""
    sig = types.int64(types.int64, types.int64)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        fn = builder.module.declare_intrinsic("llvm.x86.bmi.pext.64", fnty=ir.FunctionType(i64, [i64, i64]))
        return builder.call(fn, args)
    return sig, codegen


if not JIT:
    # Plain-Python twins: numba cannot run an @intrinsic as Python. Each checks its bounds (Python's own
    # indexing would wrap a negative position around) and keeps int64 arithmetic: numpy scalars wrap as the
    # compiled code does, but warn when they do (the hash and varint code wraps on purpose). This build is
    # for tests and the fuzzer only, so it may set numpy's process-wide error state.
    np.seterr(over="ignore")

    def _check(what, arr, pos, width):
        if pos < 0 or pos + width > len(arr):
            raise WireBug(what, int(pos), len(arr))

    def at(arr, pos):
        _check("at", arr, pos, 1)
        return arr[pos]

    def byte_at(arr, pos):
        _check("byte_at", arr, pos, 1)
        return np.int64(arr[pos])

    def load_i64(arr, pos):
        _check("load_i64", arr, pos, 8)
        return np.int64(int.from_bytes(bytes(arr[pos:pos + 8]), "little", signed=True))

    def load_f64(arr, pos):
        _check("load_f64", arr, pos, 8)
        return np.float64(struct.unpack("<d", bytes(arr[pos:pos + 8]))[0])

    def store_f64(arr, pos, value):
        _check("store_f64", arr, pos, 8)
        arr[pos:pos + 8] = np.frombuffer(struct.pack("<d", value), dtype=np.uint8)

    def store_i64(arr, pos, value):
        _check("store_i64", arr, pos, 8)
        arr[pos:pos + 8] = np.frombuffer(int(value).to_bytes(8, "little", signed=True), dtype=np.uint8)

    def f64_bits(x):
        return np.float64(x).view(np.int64)

    def trailing_zeros(x):
        x = int(x) & 0xFFFFFFFFFFFFFFFF
        return np.int64((x & -x).bit_length() - 1)

elif CHECKED:
    @njit(**INLINE)
    def at(arr, pos):
        if pos < 0 or pos >= len(arr):
            raise WireBug("at", pos, len(arr))
        return _raw_at(arr, pos)

    @njit(**INLINE)
    def byte_at(arr, pos):
        if pos < 0 or pos >= len(arr):
            raise WireBug("byte_at", pos, len(arr))
        return _raw_byte(arr, pos)

    @njit(**INLINE)
    def load_i64(arr, pos):
        if pos < 0 or pos > len(arr) - 8:
            raise WireBug("load_i64", pos, len(arr))
        return _raw_load_i64(arr, pos)

    @njit(**INLINE)
    def load_f64(arr, pos):
        if pos < 0 or pos > len(arr) - 8:
            raise WireBug("load_f64", pos, len(arr))
        return _raw_load_f64(arr, pos)

    @njit(**INLINE)
    def store_f64(arr, pos, value):
        if pos < 0 or pos > len(arr) - 8:
            raise WireBug("store_f64", pos, len(arr))
        _raw_store_f64(arr, pos, value)

    @njit(**INLINE)
    def store_i64(arr, pos, value):
        if pos < 0 or pos > len(arr) - 8:
            raise WireBug("store_i64", pos, len(arr))
        _raw_store_i64(arr, pos, value)

    f64_bits = _raw_f64_bits
    trailing_zeros = _raw_trailing_zeros

else:
    at, byte_at, load_i64, load_f64 = _raw_at, _raw_byte, _raw_load_i64, _raw_load_f64
    store_f64, store_i64 = _raw_store_f64, _raw_store_i64
    f64_bits, trailing_zeros = _raw_f64_bits, _raw_trailing_zeros


@njit(**INLINE)
def tail_word(b, p, k):
    """The k < 8 bytes at b[p:p+k] as the low bytes of an int64 (the rest zero), never reading past b."""
    if p + 8 <= len(b):
        return load_i64(b, p) & ((np.int64(1) << (8 * k)) - 1)
    w = np.int64(0)
    for j in range(k):
        w |= byte_at(b, p + j) << (8 * j)
    return w
