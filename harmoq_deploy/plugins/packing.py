"""Packed k-bit weights (k = 2, 3, 4): the bit layout of the ``harmoq`` low-bit operators.

Layout, version 1 (also in docs/lowbit_operator.md):

- A weight code is a symmetric signed integer ``q`` in ``[-(2^(k-1) - 1), 2^(k-1) - 1]`` (the
  narrow grid TensorRT runs; 2-bit is ternary). It is stored offset-binary, ``u = q + 2^(k-1)``,
  in ``k`` bits (``u = 0`` is never written).
- Each output channel (row) is its own bit stream: value ``i`` of the row occupies stream bits
  ``[i k, (i + 1) k)``, least significant bit first; stream bit ``t`` is bit ``t mod 32`` of word
  ``t div 32``. A 3-bit value that starts at bit 30 or 31 of a word continues in the next word.
- Rows are padded with zero bits to whole 32-bit words: ``ceil(K k / 32)`` words per row, stored
  as an int32 tensor ``[N, words]`` (the same bits as uint32; int32 because more runtimes take it).
"""

import numpy as np

from ..errors import HarmoqError

PACKED_BITS = (2, 3, 4)
WORD_BITS = 32


def check_packed_bits(bits: int) -> int:
    if bits not in PACKED_BITS:
        raise HarmoqError(f"packed weights take {', '.join(map(str, PACKED_BITS))} bits, got {bits}")
    return bits


def words_per_row(length: int, bits: int) -> int:
    return -(-length * bits // WORD_BITS)


def code_range(bits: int) -> tuple[int, int]:
    top = 2 ** (bits - 1) - 1
    return -top, top


def _positions(length: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Word index and bit shift where each value of a row starts."""
    start = np.arange(length, dtype=np.int64) * bits
    return start // WORD_BITS, start % WORD_BITS


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """``[N, K]`` integer codes -> ``[N, ceil(K bits / 32)]`` int32 words."""
    check_packed_bits(bits)
    codes = np.asarray(codes)
    low, high = code_range(bits)
    if codes.ndim != 2:
        raise HarmoqError(f"pack expects [rows, columns] codes, got shape {codes.shape}")
    if codes.size and (codes.min() < low or codes.max() > high):
        raise HarmoqError(f"{bits}-bit codes must lie in [{low}, {high}], got [{codes.min()}, {codes.max()}]")
    rows, length = codes.shape
    unsigned = (codes.astype(np.int64) + 2 ** (bits - 1)).astype(np.uint64)
    word, shift = _positions(length, bits)
    # One extra word absorbs the high part of a value that crosses the last word boundary.
    words = np.zeros((rows, words_per_row(length, bits) + 1), np.uint64)
    placed = unsigned << shift.astype(np.uint64)
    for column in range(length):  # a row's columns share words, so accumulate them one at a time
        words[:, word[column]] |= placed[:, column] & np.uint64(0xFFFFFFFF)
        words[:, word[column] + 1] |= placed[:, column] >> np.uint64(WORD_BITS)
    return words[:, :-1].astype(np.uint32).view(np.int32)


def unpack(words: np.ndarray, bits: int, length: int) -> np.ndarray:
    """``[N, words]`` int32 -> ``[N, length]`` int8 codes (the inverse of ``pack``)."""
    check_packed_bits(bits)
    words = np.asarray(words)
    if words.ndim != 2 or words.shape[1] != words_per_row(length, bits):
        raise HarmoqError(f"{length} {bits}-bit values need {words_per_row(length, bits)} words per row, "
                          f"got shape {words.shape}")
    unsigned = words.view(np.uint32).astype(np.uint64)
    padded = np.concatenate([unsigned, np.zeros((len(words), 1), np.uint64)], axis=1)
    word, shift = _positions(length, bits)
    pairs = padded[:, word] | (padded[:, word + 1] << np.uint64(WORD_BITS))
    values = (pairs >> shift.astype(np.uint64)) & np.uint64(2**bits - 1)
    return (values.astype(np.int64) - 2 ** (bits - 1)).astype(np.int8)
