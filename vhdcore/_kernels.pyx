"""Compiled kernels: the twins of ``vhdcore._reference``.

Every ``def`` here has the name, parameters, defaults, results and
exception types of the reference function of the same name, whose
docstring is the documentation. Each wrapper checks every type, index and
length with the GIL held, then hands raw pointers and lengths to a
``c_*`` core (declared in ``_kernels.pxd``, so other Cython code can
cimport it) that runs without the GIL.

Arguments are taken apart with the C buffer protocol rather than typed
memoryviews: the reference accepts any C-contiguous buffer (numpy arrays
of any dtype, ``array.array``, ...) as its bytes, which a
``const uint8_t[::1]`` argument would refuse with the wrong exception, and
acquiring a ``Py_buffer`` costs a fraction of a memoryview slice on 4 KiB
inputs. Only plain, common cases take the fast path; anything else is
handed to the reference's own argument helpers, so the exception raised for
an odd argument is the twin's by construction.

Compiler directives live in ``setup.py``, not here.
"""

from cpython.buffer cimport (
    PyBUF_FULL_RO,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from cpython cimport array

import array as _array_module

#: numpy is imported inside the kernels that return numpy arrays, when first
#: called (see _reference): opening and converting never need it.
cdef array.array _INT64_TEMPLATE = _array_module.array("q")
cdef array.array _UINT8_TEMPLATE = _array_module.array("B")

from . import _reference

__all__ = list(_reference.__all__)

cdef extern from "<assert.h>":
    # C assert: live in the debug build (VHDCORE_DEBUG_BUILD=1 compiles with
    # -UNDEBUG), compiled away in release builds, which define NDEBUG.
    void c_assert "assert"(bint condition) noexcept nogil


cdef extern from *:
    """
    #include <string.h>

    /* Copy `count` 32-bit words from src to dst, reversing the bytes of
       each (big-endian <-> native on little-endian hosts; a plain copy on
       big-endian ones). Both pointers may be unaligned.

       The x86-64 baseline (SSE2) has no byte shuffle, so the loop cannot
       be vectorised for it and runs one bswap per entry, half the speed of
       numpy's runtime-dispatched byte swap. With GCC on glibc the function
       is compiled twice, for AVX2 and for the baseline, and the loader
       picks one per CPU (an ifunc): the wheel stays portable. */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
    #define VHD_CLONES __attribute__((target_clones("avx2", "default")))
    #else
    #define VHD_CLONES
    #endif

    static VHD_CLONES void vhd_swap32_copy(unsigned char *dst, const unsigned char *src,
                                           Py_ssize_t count) {
        Py_ssize_t i;
        uint32_t word;
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        memcpy(dst, src, (size_t)count * 4);
    #else
        for (i = 0; i < count; i++) {
            memcpy(&word, src + 4 * i, 4);
            word = ((word & 0x000000FFu) << 24) | ((word & 0x0000FF00u) << 8)
                 | ((word & 0x00FF0000u) >> 8) | (word >> 24);
            memcpy(dst + 4 * i, &word, 4);
        }
    #endif
    }

    /* Count leading zeros of a non-zero 64-bit word, and popcount. Plain
       GCC/Clang builtins; the fallbacks keep other compilers working. */
    #if defined(__GNUC__) || defined(__clang__)
    #define vhd_clz64(x) __builtin_clzll(x)
    #define vhd_popcount64(x) __builtin_popcountll(x)
    #else
    static int vhd_clz64(unsigned long long x) {
        int n = 0;
        while (!(x & 0x8000000000000000ULL)) { x <<= 1; n++; }
        return n;
    }
    static int vhd_popcount64(unsigned long long x) {
        x = x - ((x >> 1) & 0x5555555555555555ULL);
        x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
        x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
        return (int)((x * 0x0101010101010101ULL) >> 56);
    }
    #endif
    """
    int vhd_clz64(uint64_t x) noexcept nogil
    void vhd_swap32_copy(uint8_t* dst, const uint8_t* src, Py_ssize_t count) noexcept nogil
    void PyObject_GC_UnTrack(void* op) noexcept
    int vhd_popcount64(uint64_t x) noexcept nogil


cdef enum:
    # Below this many bytes of work the GIL stays held: releasing and
    # retaking it costs about as much as a 4 KiB scan, which would lose
    # is_zero its lead over `buf == bytes(len(buf))` on small inputs.
    # (Cython's `with nogil(condition)` takes compile-time conditions only.)
    NOGIL_BYTES = 16384
    # Runs computed per GIL-free stretch by the list-building kernels (their
    # buffers live on the stack, so keep it modest).
    RUN_BATCH = 1024

# Integer arguments are saturated to +-SATURATE once known to be ints, so a
# sum of two stays inside int64; every real size is far below it.
cdef int64_t SATURATE = (<int64_t>1) << 61
cdef uint32_t BAT_UNUSED = 0xFFFFFFFF
cdef int64_t SECTOR = 512


# ---------------------------------------------------------------------------
# Argument handling (GIL held)

cdef int _acquire_bytes(object buf, Py_buffer* view, str name) except -1:
    """Fill ``view`` with ``buf`` as C-contiguous bytes, as ``_bytes_view`` would."""
    if type(buf) is bytes or type(buf) is bytearray:
        PyObject_GetBuffer(buf, view, PyBUF_FULL_RO)
        return 0
    if buf is not None:
        try:
            PyObject_GetBuffer(buf, view, PyBUF_FULL_RO)
        except Exception:
            pass  # the reference helper below raises the twin's exception
        else:
            # 1-D unsigned bytes with unit stride: exactly what the reference
            # uses as it is. memoryview's own contiguity rule for 1-D views
            # looks at the stride even when the length is 0, so this does too.
            if (view.ndim == 1 and view.itemsize == 1 and view.suboffsets == NULL
                    and (view.format == NULL
                         or (view.format[0] == b'B' and view.format[1] == 0))
                    and (view.strides == NULL or view.strides[0] == 1)):
                return 0
            PyBuffer_Release(view)
    cast = _reference._bytes_view(buf, name)
    PyObject_GetBuffer(cast, view, PyBUF_FULL_RO)
    return 0


cdef bint _is_native_uint32_format(const char* fmt) noexcept:
    # format.lstrip("@=") in ("I", "L"), as in _reference._uint32_view.
    if fmt == NULL:
        return False
    while fmt[0] == b'@' or fmt[0] == b'=':
        fmt += 1
    return (fmt[0] == b'I' or fmt[0] == b'L') and fmt[1] == 0


cdef int _acquire_uint32(object bat, Py_buffer* view) except -1:
    """Fill ``view`` with ``bat`` as a 1-D native uint32 run, as ``_uint32_view`` would."""
    if bat is not None:
        try:
            PyObject_GetBuffer(bat, view, PyBUF_FULL_RO)
        except Exception:
            pass
        else:
            if (view.ndim == 1 and view.itemsize == 4 and view.suboffsets == NULL
                    and _is_native_uint32_format(view.format)
                    and (view.strides == NULL or view.strides[0] == 4)):
                return 0
            PyBuffer_Release(view)
    checked = _reference._uint32_view(bat)
    PyObject_GetBuffer(checked, view, PyBUF_FULL_RO)
    return 0


cdef inline void _untrack(object item) noexcept:
    # Result tuples hold only ints and bools, which can never form a cycle.
    # CPython would untrack them itself at its next collection; doing it
    # now spares those collections from walking up to millions of them
    # while a big result list is being built.
    PyObject_GC_UnTrack(<PyObject*>item)


cdef inline object _index(object value, str name):
    """``operator.index`` with the reference's message; exact ints pass untouched."""
    if type(value) is int:
        return value
    return _reference._index(value, name)


cdef inline int64_t _saturate(object value) noexcept:
    """An exact Python int as int64, clamped to +-SATURATE."""
    cdef int overflow = 0
    cdef long long result = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow > 0 or result > SATURATE:
        return SATURATE
    if overflow < 0 or result < -SATURATE:
        return -SATURATE
    return result


cdef inline int _check_range(int64_t start, int64_t count, int64_t limit,
                             object start_value, object count_value, str what) except -1:
    # The tests of _reference._check_range, on saturated copies of the
    # values (so start + count cannot overflow, and a saturated value is
    # above any real limit); messages quote the values as given.
    if start < 0:
        raise ValueError(f"{what}: start {start_value} is negative")
    if count < 0:
        raise ValueError(f"{what}: count {count_value} is negative")
    if start + count > limit:
        raise ValueError(f"{what}: range {start_value}+{count_value} runs past the end ({limit})")
    return 0


# ---------------------------------------------------------------------------
# Cores (no GIL, no checks: the wrappers have done them)

cdef inline uint64_t _or_words(const uint8_t* p, Py_ssize_t words) noexcept nogil:
    # OR of `words` 8-byte words; written as a plain reduction so gcc
    # vectorises it.
    cdef uint64_t acc = 0
    cdef Py_ssize_t i
    for i in range(words):
        acc |= load_ne64(p + 8 * i)
    return acc


cdef uint32_t c_vhd_checksum(const uint8_t* buf, Py_ssize_t n,
                             Py_ssize_t checksum_offset) noexcept nogil:
    c_assert(0 <= checksum_offset and checksum_offset + 4 <= n)
    # Only the low 32 bits of the sum matter. Bytes are summed eight at a
    # time: the even and odd bytes of a word go to four 16-bit lanes, each
    # lane gaining at most 510 per word, so 128 words fit before the lanes
    # are folded into the total.
    cdef uint64_t total = 0, lanes, word
    cdef uint64_t mask = 0x00FF00FF00FF00FF
    cdef Py_ssize_t i = 0, j, block, words = n // 8
    while i < words:
        block = min(words - i, 128)
        lanes = 0
        for j in range(block):
            word = load_ne64(buf + 8 * (i + j))
            lanes += (word & mask) + ((word >> 8) & mask)
        total += ((lanes & 0xFFFF) + ((lanes >> 16) & 0xFFFF)
                  + ((lanes >> 32) & 0xFFFF) + (lanes >> 48))
        i += block
    for j in range(words * 8, n):
        total += buf[j]
    for j in range(checksum_offset, checksum_offset + 4):
        total -= buf[j]
    return <uint32_t>(~total)


cdef bint c_is_zero(const uint8_t* buf, Py_ssize_t n) noexcept nogil:
    # 256-byte blocks: long enough for a vectorised OR, short enough that a
    # non-zero early in a big buffer is found early.
    cdef Py_ssize_t i = 0, blocks = n // 256
    for i in range(blocks):
        if _or_words(buf + 256 * i, 32):
            return False
    for i in range(blocks * 256, n):
        if buf[i]:
            return False
    return True


cdef Py_ssize_t c_find_nonzero(const uint8_t* buf, Py_ssize_t n,
                               Py_ssize_t start) noexcept nogil:
    c_assert(0 <= start and start <= n)
    cdef Py_ssize_t i = start
    while i + 256 <= n:
        if _or_words(buf + i, 32):
            break
        i += 256
    while i + 8 <= n and load_ne64(buf + i) == 0:
        i += 8
    while i < n:
        if buf[i]:
            return i
        i += 1
    return -1


cdef void c_zero_chunks(const uint8_t* buf, Py_ssize_t n, Py_ssize_t chunk_size,
                        uint8_t* flags) noexcept nogil:
    c_assert(chunk_size > 0)
    cdef Py_ssize_t chunk = 0, offset = 0
    while offset < n:
        flags[chunk] = c_is_zero(buf + offset, min(chunk_size, n - offset))
        chunk += 1
        offset += chunk_size


cdef Py_ssize_t _popcount_words(const uint8_t* p, Py_ssize_t words) noexcept nogil:
    # Portable builds have no popcnt instruction (x86-64 baseline lacks it),
    # and __builtin_popcountll then becomes a call per word. This is the
    # classic SWAR popcount instead, which gcc vectorises: per-byte counts
    # (at most 8 each) are added up for 31 words, which cannot overflow a
    # byte lane, then folded to 16-bit lanes and summed by a multiply.
    cdef uint64_t m1 = 0x5555555555555555, m2 = 0x3333333333333333
    cdef uint64_t m4 = 0x0F0F0F0F0F0F0F0F, m8 = 0x00FF00FF00FF00FF
    cdef uint64_t h16 = 0x0001000100010001
    cdef uint64_t x, acc
    cdef Py_ssize_t total = 0, i = 0, j, block
    while i < words:
        block = min(words - i, 31)
        acc = 0
        for j in range(block):
            x = load_ne64(p + 8 * (i + j))
            x = x - ((x >> 1) & m1)
            x = (x & m2) + ((x >> 2) & m2)
            acc += (x + (x >> 4)) & m4
        acc = (acc & m8) + ((acc >> 8) & m8)
        total += <Py_ssize_t>((acc * h16) >> 48)
        i += block
    return total


cdef Py_ssize_t c_bitmap_count(const uint8_t* bitmap, Py_ssize_t start_bit,
                               Py_ssize_t bit_count) noexcept nogil:
    c_assert(start_bit >= 0 and bit_count >= 0)
    if bit_count <= 0:
        return 0
    cdef Py_ssize_t end_bit = start_bit + bit_count
    cdef Py_ssize_t first = start_bit >> 3, last = (end_bit - 1) >> 3
    # Bits at or after start in the first byte, before end in the last one
    # (MSB-first, so "after" means "less significant").
    cdef uint8_t head = 0xFF >> (start_bit & 7)
    cdef uint8_t tail = <uint8_t>(0xFF00 >> (((end_bit - 1) & 7) + 1))
    if first == last:
        return vhd_popcount64(bitmap[first] & head & tail)
    cdef Py_ssize_t total = vhd_popcount64(bitmap[first] & head)
    total += vhd_popcount64(bitmap[last] & tail)
    # Whole bytes between: byte order does not change a popcount, so
    # native-order words do.
    cdef Py_ssize_t i = first + 1
    cdef Py_ssize_t words = (last - i) // 8
    total += _popcount_words(bitmap + i, words)
    i += 8 * words
    while i < last:
        total += vhd_popcount64(bitmap[i])
        i += 1
    return total


cdef Py_ssize_t c_bitmap_next_change(const uint8_t* bitmap, Py_ssize_t bit,
                                     Py_ssize_t end_bit) noexcept nogil:
    c_assert(0 <= bit and bit < end_bit)
    # XOR with the run's value turns "differs" into "is set", then the
    # first set bit of a big-endian word is its count of leading zeros.
    cdef Py_ssize_t byte = bit >> 3
    cdef Py_ssize_t end_byte = (end_bit + 7) >> 3   # never read past it
    cdef uint8_t flip8 = 0xFF if (bitmap[byte] >> (7 - (bit & 7))) & 1 else 0
    cdef uint64_t flip64 = 0xFFFFFFFFFFFFFFFF if flip8 else 0
    cdef uint64_t diff = (bitmap[byte] ^ flip8) & (0xFF >> (bit & 7))
    cdef Py_ssize_t found
    if diff:
        found = byte * 8 + vhd_clz64(diff) - 56
        return min(found, end_bit)
    byte += 1
    while byte + 8 <= end_byte:
        diff = load_be64(bitmap + byte) ^ flip64
        if diff:
            return min(byte * 8 + vhd_clz64(diff), end_bit)
        byte += 8
    while byte < end_byte:
        diff = bitmap[byte] ^ flip8
        if diff:
            return min(byte * 8 + vhd_clz64(diff) - 56, end_bit)
        byte += 1
    return end_bit


cdef Py_ssize_t c_bitmap_runs(const uint8_t* bitmap, Py_ssize_t start_bit,
                              Py_ssize_t end_bit, int64_t* bounds,
                              Py_ssize_t max_runs) noexcept nogil:
    c_assert(start_bit >= 0 and max_runs > 0)
    cdef Py_ssize_t runs = 0, bit = start_bit
    bounds[0] = bit
    while bit < end_bit and runs < max_runs:
        bit = c_bitmap_next_change(bitmap, bit, end_bit)
        runs += 1
        bounds[runs] = bit
    return runs


cdef inline uint64_t _changes(const uint8_t* bitmap, Py_ssize_t byte, Py_ssize_t width,
                              Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # The `width` bytes (8 or 1) at `byte` as a big-endian word, left
    # aligned, XORed with itself shifted one bit along (the bit before the
    # word coming in at the top): bit k is set where bit 8 * byte + k
    # differs from the bit before it. Only positions in [lo, hi) are kept;
    # the word must hold one of them, so the shifts below stay under 64.
    cdef uint64_t word, before, mask, ones = ~(<uint64_t>0)
    cdef Py_ssize_t base = byte * 8, first_k = 0, end_k
    if width == 8:
        word = load_be64(bitmap + byte)
    else:
        word = <uint64_t>bitmap[byte] << 56
    before = (bitmap[byte - 1] & 1) if byte > 0 else 0
    if lo > base:
        first_k = lo - base
    end_k = min(hi - base, 8 * width)
    mask = ones >> first_k
    if end_k < 64:
        mask &= ~(ones >> end_k)
    return (word ^ ((word >> 1) | (before << 63))) & mask


cdef Py_ssize_t c_bitmap_run_count(const uint8_t* bitmap, Py_ssize_t start_bit,
                                   Py_ssize_t end_bit) noexcept nogil:
    c_assert(start_bit >= 0)
    if start_bit >= end_bit:
        return 0
    # One run, plus one per bit that differs from the bit before it.
    cdef Py_ssize_t runs = 1, lo = start_bit + 1
    cdef Py_ssize_t byte = lo >> 3, end_byte = ((end_bit - 1) >> 3) + 1, width
    while lo < end_bit and byte < end_byte:
        width = 8 if byte + 8 <= end_byte else 1
        runs += vhd_popcount64(_changes(bitmap, byte, width, lo, end_bit))
        byte += width
    return runs


cdef Py_ssize_t c_bitmap_runs_array(const uint8_t* bitmap, Py_ssize_t start_bit,
                                    Py_ssize_t end_bit, int64_t* starts, int64_t* lengths,
                                    uint8_t* states) noexcept nogil:
    c_assert(start_bit >= 0)
    if start_bit >= end_bit:
        return 0
    # Walk the set bits of each word of changes (the run boundaries) with
    # clz: a random bitmap changes every other bit, so finding each change
    # by scanning from the last one would cost a scan per run.
    cdef uint8_t value = (bitmap[start_bit >> 3] >> (7 - (start_bit & 7))) & 1
    cdef Py_ssize_t runs = 1, lo = start_bit + 1, position, k
    cdef Py_ssize_t byte = lo >> 3, end_byte = ((end_bit - 1) >> 3) + 1, width
    cdef uint64_t changes
    starts[0] = start_bit
    states[0] = value
    while lo < end_bit and byte < end_byte:
        width = 8 if byte + 8 <= end_byte else 1
        changes = _changes(bitmap, byte, width, lo, end_bit)
        while changes:
            k = vhd_clz64(changes)
            changes ^= (<uint64_t>1 << 63) >> k
            position = byte * 8 + k
            lengths[runs - 1] = position - starts[runs - 1]
            starts[runs] = position
            value ^= 1
            states[runs] = value
            runs += 1
        byte += width
    lengths[runs - 1] = end_bit - starts[runs - 1]
    return runs

cdef void c_bitmap_fill(uint8_t* bitmap, Py_ssize_t start_bit, Py_ssize_t bit_count,
                        bint value) noexcept nogil:
    c_assert(start_bit >= 0 and bit_count >= 0)
    if bit_count <= 0:
        return
    cdef Py_ssize_t end_bit = start_bit + bit_count
    cdef Py_ssize_t first = start_bit >> 3, last = (end_bit - 1) >> 3
    cdef uint8_t head = 0xFF >> (start_bit & 7)
    cdef uint8_t tail = <uint8_t>(0xFF00 >> (((end_bit - 1) & 7) + 1))
    if first == last:
        head &= tail
    if value:
        bitmap[first] |= head
    else:
        bitmap[first] &= ~head
    if first == last:
        return
    if last > first + 1:
        memset(bitmap + first + 1, 0xFF if value else 0, last - first - 1)
    if value:
        bitmap[last] |= tail
    else:
        bitmap[last] &= ~tail


cdef void c_bat_decode(const uint8_t* raw, Py_ssize_t count, uint32_t* out) noexcept nogil:
    vhd_swap32_copy(<uint8_t*>out, raw, count)


cdef void c_bat_encode(const uint32_t* bat, Py_ssize_t count, uint8_t* out) noexcept nogil:
    vhd_swap32_copy(out, <const uint8_t*>bat, count)


cdef inline uint32_t _entry(const uint32_t* bat, int64_t index) noexcept nogil:
    # Numpy arrays are aligned, but a memoryview cast of a sliced buffer
    # need not be; memcpy is one plain load either way.
    cdef uint32_t value
    memcpy(&value, (<const uint8_t*>bat) + 4 * index, 4)
    return value


cdef Py_ssize_t c_bat_extents(const uint32_t* bat, int64_t first_sector,
                              int64_t end_sector, int64_t sectors_per_block,
                              int64_t bitmap_bytes, int64_t* runs,
                              Py_ssize_t max_runs) noexcept nogil:
    c_assert(first_sector >= 0 and sectors_per_block > 0 and max_runs > 0)
    cdef Py_ssize_t count = 0
    cdef int64_t sector = first_sector, length, offset
    # One division up front; after the first block every block starts at
    # its sector 0 (a division per block was most of the loop's time).
    cdef int64_t block = first_sector // sectors_per_block
    cdef int64_t within = first_sector - block * sectors_per_block
    cdef uint32_t entry
    cdef int64_t* last
    while sector < end_sector:
        length = min(sectors_per_block - within, end_sector - sector)
        entry = _entry(bat, block)
        if entry == BAT_UNUSED:
            offset = -1
        else:
            offset = entry * SECTOR + bitmap_bytes + within * SECTOR
        last = runs + 3 * (count - 1)
        if count and ((offset == -1 and last[2] == -1) or (
                offset != -1 and last[2] != -1
                and last[2] + last[1] * SECTOR == offset)):
            last[1] += length
        elif count == max_runs:
            break   # the caller resumes at `sector`, which starts a run
        else:
            runs[3 * count] = sector
            runs[3 * count + 1] = length
            runs[3 * count + 2] = offset
            count += 1
        sector += length
        block += 1
        within = 0
    return count


cdef inline int64_t _block_offset(const uint32_t* bat, int64_t block, int64_t within,
                                  int64_t bitmap_bytes) noexcept nogil:
    # File offset of sector `within` of `block`, or -1 if unallocated.
    cdef uint32_t entry = _entry(bat, block)
    if entry == BAT_UNUSED:
        return -1
    return entry * SECTOR + bitmap_bytes + within * SECTOR


cdef Py_ssize_t c_bat_run_count(const uint32_t* bat, int64_t first_sector,
                                int64_t end_sector, int64_t sectors_per_block,
                                int64_t bitmap_bytes) noexcept nogil:
    # How many runs c_bat_extents_array writes for these arguments: the
    # same walk, keeping only where the previous run ends in the file.
    c_assert(first_sector >= 0 and sectors_per_block > 0)
    cdef Py_ssize_t count = 0
    cdef int64_t sector = first_sector, length, offset, last_end = -2
    cdef int64_t block = first_sector // sectors_per_block
    cdef int64_t within = first_sector - block * sectors_per_block
    while sector < end_sector:
        length = min(sectors_per_block - within, end_sector - sector)
        offset = _block_offset(bat, block, within, bitmap_bytes)
        # last_end is -1 after an unallocated run, -2 before the first.
        if offset == -1:
            if last_end != -1:
                count += 1
            last_end = -1
        else:
            if offset != last_end:
                count += 1
            last_end = offset + length * SECTOR
        sector += length
        block += 1
        within = 0
    return count


cdef Py_ssize_t c_bat_extents_array(const uint32_t* bat, int64_t first_sector,
                                    int64_t end_sector, int64_t sectors_per_block,
                                    int64_t bitmap_bytes, int64_t* sectors, int64_t* counts,
                                    int64_t* offsets) noexcept nogil:
    # c_bat_extents with the three fields in three columns, all in one call.
    c_assert(first_sector >= 0 and sectors_per_block > 0)
    cdef Py_ssize_t count = 0
    cdef int64_t sector = first_sector, length, offset, last_end = -2
    cdef int64_t block = first_sector // sectors_per_block
    cdef int64_t within = first_sector - block * sectors_per_block
    while sector < end_sector:
        length = min(sectors_per_block - within, end_sector - sector)
        offset = _block_offset(bat, block, within, bitmap_bytes)
        if (offset == -1 and last_end == -1) or (offset != -1 and offset == last_end):
            counts[count - 1] += length
        else:
            sectors[count] = sector
            counts[count] = length
            offsets[count] = offset
            count += 1
        last_end = -1 if offset == -1 else offset + length * SECTOR
        sector += length
        block += 1
        within = 0
    return count

cdef void _radix_pass(const uint32_t* bat, const uint32_t* src, uint32_t* dst,
                      Py_ssize_t m, int shift, uint32_t mask,
                      uint32_t* counts) noexcept nogil:
    # One stable counting-sort pass on digit (entry >> shift) & mask.
    cdef Py_ssize_t i
    cdef uint32_t digit, total = 0, c
    for i in range(mask + 1):
        c = counts[i]
        counts[i] = total
        total += c
    for i in range(m):
        digit = (_entry(bat, src[i]) >> shift) & mask
        dst[counts[digit]] = src[i]
        counts[digit] += 1


cdef Py_ssize_t c_bat_scan(const uint32_t* bat, Py_ssize_t n, int64_t span,
                           int64_t data_start, int64_t last_good_start,
                           uint32_t* order, uint32_t* scratch, uint8_t* bad,
                           int64_t* max_start) noexcept nogil:
    c_assert(n >= 0 and <uint64_t>n <= BAT_UNUSED)
    # Sort the allocated indices by entry with a stable LSD radix sort
    # (11 + 11 + 10 bits): indices go in ascending, so equal entries stay
    # in index order, which is the reference's (start, index) order. A
    # million entries sort in a few milliseconds, and a pass whose digit is
    # the same for every entry (the high bits, in any image under 1 TiB of
    # file) is skipped.
    cdef Py_ssize_t m = 0, i, pass_
    cdef uint32_t entry
    cdef uint32_t counts[3][2048]
    cdef int shifts[3]
    cdef uint32_t masks[3]
    shifts[0] = 0; shifts[1] = 11; shifts[2] = 22
    masks[0] = 0x7FF; masks[1] = 0x7FF; masks[2] = 0x3FF
    memset(counts, 0, sizeof(counts))
    for i in range(n):
        entry = _entry(bat, i)
        if entry != BAT_UNUSED:
            order[m] = <uint32_t>i
            m += 1
            counts[0][entry & 0x7FF] += 1
            counts[1][(entry >> 11) & 0x7FF] += 1
            counts[2][entry >> 22] += 1
    max_start[0] = 0
    if m == 0:
        return 0
    cdef uint32_t* src = order
    cdef uint32_t* dst = scratch
    cdef uint32_t* swap
    for pass_ in range(3):
        if counts[pass_][(_entry(bat, src[0]) >> shifts[pass_]) & masks[pass_]] == m:
            continue
        _radix_pass(bat, src, dst, m, shifts[pass_], masks[pass_], counts[pass_])
        swap = src
        src = dst
        dst = swap
    # Neighbours in start order overlap when their starts are less than a
    # span apart; since every block has the same span, that is the whole
    # overlap test.
    cdef int64_t start, previous = 0
    for i in range(m):
        start = _entry(bat, src[i]) * SECTOR
        if start < data_start or start > last_good_start:
            bad[src[i]] = 1
        if i and start - previous < span:
            bad[src[i]] = 1
            bad[src[i - 1]] = 1
        previous = start
    max_start[0] = previous
    return m


# ---------------------------------------------------------------------------
# The kernels

def vhd_checksum(buf, checksum_offset):
    """Compiled twin of `_reference.vhd_checksum`."""
    cdef Py_buffer view
    _acquire_bytes(buf, &view, "buf")
    cdef const uint8_t* p = <const uint8_t*>view.buf
    cdef Py_ssize_t n = view.len
    cdef int64_t offset
    cdef uint32_t result
    try:
        checksum_offset = _index(checksum_offset, "checksum_offset")
        offset = _saturate(checksum_offset)
        if offset < 0 or offset + 4 > n:
            raise ValueError(
                f"checksum field at {checksum_offset} does not fit in {n} bytes"
            )
        if n < NOGIL_BYTES:
            result = c_vhd_checksum(p, n, <Py_ssize_t>offset)
        else:
            with nogil:
                result = c_vhd_checksum(p, n, <Py_ssize_t>offset)
        return result
    finally:
        PyBuffer_Release(&view)


def is_zero(buf):
    """Compiled twin of `_reference.is_zero`."""
    cdef Py_buffer view
    _acquire_bytes(buf, &view, "buf")
    cdef const uint8_t* p = <const uint8_t*>view.buf
    cdef Py_ssize_t n = view.len
    cdef bint result
    try:
        if n < NOGIL_BYTES:
            result = c_is_zero(p, n)
        else:
            with nogil:
                result = c_is_zero(p, n)
        return result
    finally:
        PyBuffer_Release(&view)


def find_nonzero(buf, start=0):
    """Compiled twin of `_reference.find_nonzero`."""
    cdef Py_buffer view
    _acquire_bytes(buf, &view, "buf")
    cdef const uint8_t* p = <const uint8_t*>view.buf
    cdef Py_ssize_t n = view.len
    cdef int64_t first
    cdef Py_ssize_t result
    try:
        start = _index(start, "start")
        first = _saturate(start)
        if first < 0 or first > n:
            raise ValueError(f"start {start} outside buffer of {n} bytes")
        if n - first < NOGIL_BYTES:
            result = c_find_nonzero(p, n, <Py_ssize_t>first)
        else:
            with nogil:
                result = c_find_nonzero(p, n, <Py_ssize_t>first)
        return result
    finally:
        PyBuffer_Release(&view)


cdef inline void _zero_chunks_into(const uint8_t* p, Py_ssize_t n, Py_ssize_t size,
                                   uint8_t* flags) noexcept:
    """``c_zero_chunks``, without the GIL when the buffer is big enough to pay for it."""
    if n < NOGIL_BYTES:
        c_zero_chunks(p, n, size, flags)
    else:
        with nogil:
            c_zero_chunks(p, n, size, flags)


def zero_chunks(buf, chunk_size, out=None):
    """Compiled twin of `_reference.zero_chunks`."""
    cdef Py_buffer view, out_view
    _acquire_bytes(buf, &view, "buf")
    cdef const uint8_t* p = <const uint8_t*>view.buf
    cdef Py_ssize_t n = view.len, count
    cdef int64_t size
    try:
        chunk_size = _index(chunk_size, "chunk_size")
        size = _saturate(chunk_size)
        if size <= 0:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        if size > n:
            size = max(n, 1)   # one chunk, however large it was asked to be
        count = n // size + (1 if n % size else 0)
        if out is not None:
            _acquire_bytes(out, &out_view, "out")
            try:
                if out_view.readonly:
                    raise ValueError("out must be a writable buffer")
                if out_view.len < count:
                    raise ValueError(
                        f"out holds {out_view.len} bytes; {count} flags need as many"
                    )
                _zero_chunks_into(p, n, <Py_ssize_t>size, <uint8_t*>out_view.buf)
            finally:
                PyBuffer_Release(&out_view)
            return _reference._bytes_view(out, "out")[:count]
        import numpy as np
        flags = np.empty(count, dtype=bool)
        if count:
            PyObject_GetBuffer(flags, &out_view, PyBUF_FULL_RO | PyBUF_WRITABLE)
            try:
                _zero_chunks_into(p, n, <Py_ssize_t>size, <uint8_t*>out_view.buf)
            finally:
                PyBuffer_Release(&out_view)
        return flags
    finally:
        PyBuffer_Release(&view)


cdef int _bitmap_args(Py_buffer* view, object start_bit, object bit_count, str what,
                      Py_ssize_t* first, Py_ssize_t* count) except -1:
    start_bit = _index(start_bit, "start_bit")
    bit_count = _index(bit_count, "bit_count")
    cdef int64_t s = _saturate(start_bit)
    cdef int64_t c = _saturate(bit_count)
    _check_range(s, c, <int64_t>view.len * 8, start_bit, bit_count, what)
    first[0] = <Py_ssize_t>s
    count[0] = <Py_ssize_t>c
    return 0


def bitmap_count(bitmap, start_bit, bit_count):
    """Compiled twin of `_reference.bitmap_count`."""
    cdef Py_buffer view
    cdef Py_ssize_t first, count, result
    _acquire_bytes(bitmap, &view, "bitmap")
    try:
        _bitmap_args(&view, start_bit, bit_count, "bitmap_count", &first, &count)
        if count // 8 < NOGIL_BYTES:
            result = c_bitmap_count(<const uint8_t*>view.buf, first, count)
        else:
            with nogil:
                result = c_bitmap_count(<const uint8_t*>view.buf, first, count)
        return result
    finally:
        PyBuffer_Release(&view)


def bitmap_runs(bitmap, start_bit, bit_count):
    """Compiled twin of `_reference.bitmap_runs`."""
    cdef Py_buffer view
    cdef Py_ssize_t first, count, end, got, i
    cdef int64_t bounds[RUN_BATCH + 1]
    cdef const uint8_t* p
    cdef bint value
    _acquire_bytes(bitmap, &view, "bitmap")
    try:
        _bitmap_args(&view, start_bit, bit_count, "bitmap_runs", &first, &count)
        p = <const uint8_t*>view.buf
        end = first + count
        runs = []
        while first < end:
            value = (p[first >> 3] >> (7 - (first & 7))) & 1
            with nogil:
                got = c_bitmap_runs(p, first, end, bounds, RUN_BATCH)
            # Runs alternate, so only the first value needs reading.
            for i in range(got):
                item = (bounds[i], bounds[i + 1] - bounds[i], value)
                _untrack(item)
                runs.append(item)
                value = not value
            first = bounds[got]
        return runs
    finally:
        PyBuffer_Release(&view)


cdef tuple _columns(Py_ssize_t count, array.array third_template):
    """Three uninitialised columns of ``count`` items: int64, int64 and the template's type."""
    return (array.clone(_INT64_TEMPLATE, count, zero=False),
            array.clone(_INT64_TEMPLATE, count, zero=False),
            array.clone(third_template, count, zero=False))


def bitmap_runs_array(bitmap, start_bit, bit_count):
    """Compiled twin of `_reference.bitmap_runs_array`."""
    cdef Py_buffer view
    cdef Py_ssize_t first, count, end, runs
    cdef const uint8_t* p
    cdef array.array starts, lengths, states
    cdef int64_t* starts_p
    cdef int64_t* lengths_p
    cdef uint8_t* states_p
    _acquire_bytes(bitmap, &view, "bitmap")
    try:
        # "bitmap_runs" in messages: the reference raises from there.
        _bitmap_args(&view, start_bit, bit_count, "bitmap_runs", &first, &count)
        p = <const uint8_t*>view.buf
        end = first + count
        # Two passes: count the runs (a popcount of the changes, a small
        # share of the time), then fill columns of exactly that size, so
        # memory is the result's and no more.
        if count // 8 < NOGIL_BYTES:
            runs = c_bitmap_run_count(p, first, end)
        else:
            with nogil:
                runs = c_bitmap_run_count(p, first, end)
        starts, lengths, states = _columns(runs, _UINT8_TEMPLATE)
        starts_p = <int64_t*>starts.data.as_longlongs
        lengths_p = <int64_t*>lengths.data.as_longlongs
        states_p = states.data.as_uchars
        if count // 8 < NOGIL_BYTES:
            c_bitmap_runs_array(p, first, end, starts_p, lengths_p, states_p)
        else:
            with nogil:
                c_bitmap_runs_array(p, first, end, starts_p, lengths_p, states_p)
        return starts, lengths, states
    finally:
        PyBuffer_Release(&view)

def bitmap_fill(bitmap, start_bit, bit_count, value):
    """Compiled twin of `_reference.bitmap_fill`."""
    cdef Py_buffer view
    cdef Py_ssize_t first, count
    cdef bint flag
    _acquire_bytes(bitmap, &view, "bitmap")
    try:
        if view.readonly:
            raise ValueError("bitmap must be a writable buffer")
        _bitmap_args(&view, start_bit, bit_count, "bitmap_fill", &first, &count)
        if count:
            # The reference only looks at `value` when there is a bit to set.
            flag = True if value else False
            if count // 8 < NOGIL_BYTES:
                c_bitmap_fill(<uint8_t*>view.buf, first, count, flag)
            else:
                with nogil:
                    c_bitmap_fill(<uint8_t*>view.buf, first, count, flag)
        return None
    finally:
        PyBuffer_Release(&view)


def bat_decode(raw):
    """Compiled twin of `_reference.bat_decode`."""
    cdef Py_buffer view, out_view
    cdef Py_ssize_t count
    _acquire_bytes(raw, &view, "raw")
    try:
        if view.len % 4:
            raise ValueError(f"BAT bytes must be a multiple of 4 long, not {view.len}")
        count = view.len // 4
        import numpy as np
        bat = np.empty(count, dtype=np.uint32)
        if count:
            PyObject_GetBuffer(bat, &out_view, PyBUF_FULL_RO | PyBUF_WRITABLE)
            try:
                if view.len < NOGIL_BYTES:
                    c_bat_decode(<const uint8_t*>view.buf, count, <uint32_t*>out_view.buf)
                else:
                    with nogil:
                        c_bat_decode(<const uint8_t*>view.buf, count, <uint32_t*>out_view.buf)
            finally:
                PyBuffer_Release(&out_view)
        return bat
    finally:
        PyBuffer_Release(&view)


def bat_encode(bat):
    """Compiled twin of `_reference.bat_encode`."""
    cdef Py_buffer view
    cdef uint8_t* out
    _acquire_uint32(bat, &view)
    try:
        raw = PyBytes_FromStringAndSize(NULL, view.len)
        out = <uint8_t*>PyBytes_AS_STRING(raw)
        if view.len < NOGIL_BYTES:
            c_bat_encode(<const uint32_t*>view.buf, view.len // 4, out)
        else:
            with nogil:
                c_bat_encode(<const uint32_t*>view.buf, view.len // 4, out)
        return raw
    finally:
        PyBuffer_Release(&view)


cdef int _bat_extents_args(Py_buffer* view, first_sector, sector_count, sectors_per_block,
                           bitmap_bytes, int64_t* out) except -1:
    """The argument checks both BAT-extent kernels share, in one order with one wording.

    Fills ``out`` with first, count, sectors per block and bitmap bytes;
    returns 1 for sizes no VHD has (a block of 1 TiB, say), whose products
    could leave int64: the twin then does the work with Python ints.
    """
    first_sector = _index(first_sector, "first_sector")
    sector_count = _index(sector_count, "sector_count")
    sectors_per_block = _index(sectors_per_block, "sectors_per_block")
    bitmap_bytes = _index(bitmap_bytes, "bitmap_bytes")
    cdef int64_t first = _saturate(first_sector)
    cdef int64_t count = _saturate(sector_count)
    cdef int64_t per_block = _saturate(sectors_per_block)
    cdef int64_t bitmap = _saturate(bitmap_bytes)
    cdef int64_t entries = view.len // 4
    if per_block <= 0:
        raise ValueError(f"sectors_per_block must be positive, not {sectors_per_block}")
    if bitmap < 0:
        raise ValueError(f"bitmap_bytes must not be negative, not {bitmap_bytes}")
    if per_block > (1 << 31) or bitmap > (1 << 40) or entries > (1 << 31):
        return 1
    _check_range(first, count, entries * per_block, first_sector, sector_count, "bat_extents")
    out[0] = first
    out[1] = count
    out[2] = per_block
    out[3] = bitmap
    return 0


def bat_extents(bat, first_sector, sector_count, sectors_per_block, bitmap_bytes):
    """Compiled twin of `_reference.bat_extents`."""
    cdef Py_buffer view
    cdef int64_t first, count, per_block, bitmap, end
    cdef int64_t runs[3 * RUN_BATCH]
    cdef Py_ssize_t got, i
    cdef int64_t args[4]
    _acquire_uint32(bat, &view)
    try:
        if _bat_extents_args(&view, first_sector, sector_count, sectors_per_block,
                             bitmap_bytes, args):
            return _reference.bat_extents(
                bat, first_sector, sector_count, sectors_per_block, bitmap_bytes
            )
        first, count, per_block, bitmap = args[0], args[1], args[2], args[3]
        end = first + count
        whole_block = per_block
        result = []
        while first < end:
            with nogil:
                got = c_bat_extents(<const uint32_t*>view.buf, first, end, per_block,
                                    bitmap, runs, RUN_BATCH)
            for i in range(got):
                # A run of exactly one block is the common case: share
                # one int object for its length.
                if runs[3 * i + 1] == per_block:
                    item = (runs[3 * i], whole_block, runs[3 * i + 2])
                else:
                    item = (runs[3 * i], runs[3 * i + 1], runs[3 * i + 2])
                _untrack(item)
                result.append(item)
            first = runs[3 * got - 3] + runs[3 * got - 2]
        return result
    finally:
        PyBuffer_Release(&view)


def bat_extents_array(bat, first_sector, sector_count, sectors_per_block, bitmap_bytes):
    """Compiled twin of `_reference.bat_extents_array`."""
    cdef Py_buffer view
    cdef int64_t first, count, per_block, bitmap, end
    cdef Py_ssize_t runs
    cdef const uint32_t* table
    cdef array.array sectors, counts, offsets
    cdef int64_t* sectors_p
    cdef int64_t* counts_p
    cdef int64_t* offsets_p
    cdef bint release
    cdef int64_t args[4]
    _acquire_uint32(bat, &view)
    try:
        if _bat_extents_args(&view, first_sector, sector_count, sectors_per_block,
                             bitmap_bytes, args):
            # The twin raises its OverflowError where an offset leaves int64.
            return _reference.bat_extents_array(
                bat, first_sector, sector_count, sectors_per_block, bitmap_bytes
            )
        first, count, per_block, bitmap = args[0], args[1], args[2], args[3]
        end = first + count
        table = <const uint32_t*>view.buf
        # Two passes, as in bitmap_runs_array: count, then fill exactly.
        release = count // per_block >= NOGIL_BYTES // 4
        if release:
            with nogil:
                runs = c_bat_run_count(table, first, end, per_block, bitmap)
        else:
            runs = c_bat_run_count(table, first, end, per_block, bitmap)
        sectors, counts, offsets = _columns(runs, _INT64_TEMPLATE)
        sectors_p = <int64_t*>sectors.data.as_longlongs
        counts_p = <int64_t*>counts.data.as_longlongs
        offsets_p = <int64_t*>offsets.data.as_longlongs
        if release:
            with nogil:
                c_bat_extents_array(table, first, end, per_block, bitmap,
                                    sectors_p, counts_p, offsets_p)
        else:
            c_bat_extents_array(table, first, end, per_block, bitmap,
                                sectors_p, counts_p, offsets_p)
        return sectors, counts, offsets
    finally:
        PyBuffer_Release(&view)

cdef object _flagged(const uint8_t* flags, Py_ssize_t n):
    """``array("q")`` of the indices of the non-zero bytes of ``flags``, ascending."""
    cdef Py_ssize_t i, count = 0
    for i in range(n):
        if flags[i]:
            count += 1
    cdef array.array result = array.clone(_INT64_TEMPLATE, count, zero=False)
    cdef long long* out = result.data.as_longlongs
    count = 0
    for i in range(n):
        if flags[i]:
            out[count] = i
            count += 1
    return result


def bat_scan(bat, block_bytes, bitmap_bytes, data_start, data_end):
    """Compiled twin of `_reference.bat_scan`."""
    cdef Py_buffer view, flags_view
    cdef Py_ssize_t n, allocated
    cdef uint32_t* scratch = NULL
    cdef int64_t span_c, start_c, last_good_c, max_start = 0
    _acquire_uint32(bat, &view)
    try:
        block_bytes = _index(block_bytes, "block_bytes")
        bitmap_bytes = _index(bitmap_bytes, "bitmap_bytes")
        data_start = _index(data_start, "data_start")
        data_end = _index(data_end, "data_end")
        if block_bytes <= 0:
            raise ValueError(f"block_bytes must be positive, not {block_bytes}")
        if bitmap_bytes < 0 or data_start < 0 or data_end < 0:
            raise ValueError("bitmap_bytes, data_start and data_end must not be negative")
        n = view.len // 4
        if n > 0xFFFFFFFF:
            # Indices are sorted as uint32; a 16 GiB table is not a VHD.
            return _reference.bat_scan(bat, block_bytes, bitmap_bytes, data_start, data_end)
        # Starts are below 2**41, so saturating the sizes changes no test:
        # a block ends past data_end exactly when its start is above
        # data_end - span, and that threshold is clamped to [-1, 2**61].
        span = bitmap_bytes + block_bytes
        span_c = _saturate(span)
        start_c = _saturate(data_start)
        last_good_c = max(_saturate(data_end - span), -1)
        scratch = <uint32_t*>malloc(max(n, 1) * 2 * sizeof(uint32_t))
        if scratch == NULL:
            raise MemoryError()
        flags = bytearray(n)
        PyObject_GetBuffer(flags, &flags_view, PyBUF_FULL_RO | PyBUF_WRITABLE)
        try:
            with nogil:
                allocated = c_bat_scan(<const uint32_t*>view.buf, n, span_c, start_c,
                                       last_good_c, scratch, scratch + n,
                                       <uint8_t*>flags_view.buf, &max_start)
            bad = _flagged(<const uint8_t*>flags_view.buf, n)
        finally:
            PyBuffer_Release(&flags_view)
        end_of_last = max_start + span if allocated else 0
        return allocated, end_of_last, bad
    finally:
        free(scratch)
        PyBuffer_Release(&view)
