# Public cimport API of the compiled kernels.
#
# Outside Cython code can do
#
#     from vhdcore._kernels cimport c_is_zero, load_be32
#
# with the directory that holds the installed ``vhdcore`` package on the
# Cython include path. The ``c_*`` cores take raw pointers and lengths and
# trust them: every index and length must already have been checked, which
# is what the ``def`` wrappers in ``_kernels.pyx`` do before they drop the
# GIL. Cores never fail, so they are ``noexcept`` and need no status; the
# one that could run out of memory (``bat_scan``) is handed its scratch
# space by the caller. Importing ``vhdcore._kernels`` at run time (which a
# cimport does implicitly) is what makes the non-inline cores callable.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy


# Big-endian loads and stores, the byte order of every VHD field. Written as
# shifts rather than byte swaps so they are right on any host; gcc and clang
# recognise the pattern and emit a single load plus bswap (or movbe). Byte
# pointers carry no alignment promise, so these are safe anywhere in a buffer.

cdef inline uint16_t load_be16(const uint8_t* p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | p[1])


cdef inline uint32_t load_be32(const uint8_t* p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16)
            | (<uint32_t>p[2] << 8) | <uint32_t>p[3])


cdef inline uint64_t load_be64(const uint8_t* p) noexcept nogil:
    return (<uint64_t>load_be32(p) << 32) | load_be32(p + 4)


cdef inline void store_be16(uint8_t* p, uint16_t value) noexcept nogil:
    p[0] = <uint8_t>(value >> 8)
    p[1] = <uint8_t>value


cdef inline void store_be32(uint8_t* p, uint32_t value) noexcept nogil:
    p[0] = <uint8_t>(value >> 24)
    p[1] = <uint8_t>(value >> 16)
    p[2] = <uint8_t>(value >> 8)
    p[3] = <uint8_t>value


cdef inline void store_be64(uint8_t* p, uint64_t value) noexcept nogil:
    store_be32(p, <uint32_t>(value >> 32))
    store_be32(p + 4, <uint32_t>value)


# Native-order word load from a possibly unaligned address; memcpy of a
# constant size compiles to one move.
cdef inline uint64_t load_ne64(const uint8_t* p) noexcept nogil:
    cdef uint64_t word
    memcpy(&word, p, 8)
    return word


# The cores: one per kernel, same meaning as the reference twin of the same
# name without the ``c_`` prefix. Bit positions are MSB-first (bit 0 is the
# 0x80 bit of byte 0), as in VHD sector bitmaps.

# One's complement of the byte sum of buf[0:n], the 4 bytes at
# checksum_offset counted as zero (requires checksum_offset + 4 <= n).
cdef uint32_t c_vhd_checksum(const uint8_t* buf, Py_ssize_t n,
                             Py_ssize_t checksum_offset) noexcept nogil

# Whether buf[0:n] is all zero bytes (true for n == 0).
cdef bint c_is_zero(const uint8_t* buf, Py_ssize_t n) noexcept nogil

# Offset of the first non-zero byte in buf[start:n], or -1 (0 <= start <= n).
cdef Py_ssize_t c_find_nonzero(const uint8_t* buf, Py_ssize_t n,
                               Py_ssize_t start) noexcept nogil

# flags[i] = 1 where buf[i*chunk_size : (i+1)*chunk_size] (clipped to n) is
# all zero, else 0; flags holds ceil(n / chunk_size) bytes (chunk_size > 0).
cdef void c_zero_chunks(const uint8_t* buf, Py_ssize_t n, Py_ssize_t chunk_size,
                        uint8_t* flags) noexcept nogil

# Set bits in [start_bit, start_bit + bit_count).
cdef Py_ssize_t c_bitmap_count(const uint8_t* bitmap, Py_ssize_t start_bit,
                               Py_ssize_t bit_count) noexcept nogil

# First bit position in (bit, end_bit) whose value differs from bit `bit`,
# or end_bit if there is none (requires bit < end_bit).
cdef Py_ssize_t c_bitmap_next_change(const uint8_t* bitmap, Py_ssize_t bit,
                                     Py_ssize_t end_bit) noexcept nogil

# Maximal runs of equal bits from start_bit up to end_bit, at most max_runs
# of them: bounds[0] = start_bit and run i is [bounds[i], bounds[i + 1]).
# Returns the number of runs written (bounds needs max_runs + 1 slots);
# resume from bounds[result] while it is below end_bit. Run i's value is
# the value of bit bounds[i].
cdef Py_ssize_t c_bitmap_runs(const uint8_t* bitmap, Py_ssize_t start_bit,
                              Py_ssize_t end_bit, int64_t* bounds,
                              Py_ssize_t max_runs) noexcept nogil

# How many runs c_bitmap_runs_array finds in [start_bit, end_bit) (0 if
# empty): one, plus one per bit that differs from the bit before it.
cdef Py_ssize_t c_bitmap_run_count(const uint8_t* bitmap, Py_ssize_t start_bit,
                                   Py_ssize_t end_bit) noexcept nogil

# All runs of [start_bit, end_bit) in columns: run i starts at starts[i] and
# holds lengths[i] bits of value states[i] (0 or 1). Each column holds
# c_bitmap_run_count(...) items; returns that count.
cdef Py_ssize_t c_bitmap_runs_array(const uint8_t* bitmap, Py_ssize_t start_bit,
                                    Py_ssize_t end_bit, int64_t* starts, int64_t* lengths,
                                    uint8_t* states) noexcept nogil

# Set (value true) or clear bits [start_bit, start_bit + bit_count).
cdef void c_bitmap_fill(uint8_t* bitmap, Py_ssize_t start_bit, Py_ssize_t bit_count,
                        bint value) noexcept nogil

# out[i] = big-endian uint32 at raw + 4 * i, for i < count.
cdef void c_bat_decode(const uint8_t* raw, Py_ssize_t count, uint32_t* out) noexcept nogil

# Big-endian bytes of bat[0:count] into out (4 * count bytes). bat may be
# unaligned.
cdef void c_bat_encode(const uint32_t* bat, Py_ssize_t count, uint8_t* out) noexcept nogil

# Merged runs of virtual sectors [first_sector, end_sector) as triples
# (virtual_sector, count, file_offset or -1) in runs[3 * i : 3 * i + 3], at
# most max_runs of them (> 0). Returns how many; if the last one ends before
# end_sector, call again from there. The caller guarantees that
# end_sector <= count_of_entries * sectors_per_block and that no value
# overflows int64.
cdef Py_ssize_t c_bat_extents(const uint32_t* bat, int64_t first_sector,
                              int64_t end_sector, int64_t sectors_per_block,
                              int64_t bitmap_bytes, int64_t* runs,
                              Py_ssize_t max_runs) noexcept nogil

# How many runs c_bat_extents_array writes for these arguments (same terms
# as c_bat_extents).
cdef Py_ssize_t c_bat_run_count(const uint32_t* bat, int64_t first_sector,
                                int64_t end_sector, int64_t sectors_per_block,
                                int64_t bitmap_bytes) noexcept nogil

# All runs of c_bat_extents in columns (sectors[i], counts[i], offsets[i]),
# each holding c_bat_run_count(...) items; returns that count.
cdef Py_ssize_t c_bat_extents_array(const uint32_t* bat, int64_t first_sector,
                                    int64_t end_sector, int64_t sectors_per_block,
                                    int64_t bitmap_bytes, int64_t* sectors, int64_t* counts,
                                    int64_t* offsets) noexcept nogil

# Allocated entries of bat[0:n] sorted by (entry, index), with bad[i] set to
# 1 for each index whose block [entry*512, entry*512 + span) starts before
# data_start, starts after last_good_start (that is, ends past the data
# area), or overlaps a neighbour; other bad[] bytes are left 0. order and
# scratch hold n uint32 each and bad holds n bytes, zeroed by the caller;
# n must be below 2**32. Returns the allocated count, and the largest
# entry*512 in *max_start (0 if none).
cdef Py_ssize_t c_bat_scan(const uint32_t* bat, Py_ssize_t n, int64_t span,
                           int64_t data_start, int64_t last_good_start,
                           uint32_t* order, uint32_t* scratch, uint8_t* bad,
                           int64_t* max_start) noexcept nogil
