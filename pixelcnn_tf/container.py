"""The compressed file (.pxz) that compress.py writes and decompress.py reads: its layout,
``pack`` and ``read_header`` (which checks a file before any model is loaded).

No TensorFlow here: decompress.py refuses a damaged or foreign file, and an output it
must not overwrite, at once, before TensorFlow loads. The coding itself is in codec.py.

File layout (little-endian)::

  magic "PXCNNZ", format version (1 byte)
  height, width (u16), channels (u8), image count (u32), batch size (u16), flags (u8:
    1 = labels stored, 2 = names stored, bits 2-4 = 8 - the images' bit depth)
  model fingerprint (16 bytes: sha256 of the architecture and every weight)
  image digest (16 bytes: sha256 of the uint8 levels)
  length of the extras (u32), length of the payload (u32)
  extras: zlib of labels (int32 [N]) and/or names (JSON list), when stored
  payload: the range coder's 32-bit words, all batches in one stream
  CRC-32 of everything above (u32)
"""
from __future__ import annotations

import dataclasses
import json
import math
import struct
import zlib
from typing import List, Optional

import numpy as np

from pixelcnn_tf.errors import DataError

PRECISION = 24  # frequencies sum to 2^24: constriction's range coder precision
TOTAL = 1 << PRECISION
MAGIC = b"PXCNNZ"
FORMAT_VERSION = 1
_FIXED = struct.Struct("<6sB HHBIHB 16s16s II")  # everything before the extras
_CRC = struct.Struct("<I")
_LABELS, _NAMES = 1, 2  # flags
_DEPTH_SHIFT, _DEPTH_MASK = 2, 7 << 2  # flags: 8 - bits (0 for 8-bit: version-1 files)


class CodecError(DataError):
    """A file cannot be decoded (not ours, damaged, another model) or images cannot be
    encoded; the message says which and what to do."""


def _least_bits_per_subpixel(bits: int) -> float:
    """The fewest bits any sub-pixel can cost: its most probable value gets at most
    2^24 - (L - 1) of the 2^24 (every other value keeps 1)."""
    n_levels = 2 ** bits
    return -math.log2((TOTAL - n_levels + 1) / TOTAL)


@dataclasses.dataclass
class Header:
    """What a compressed file says about itself (``read_header``)."""
    image_shape: tuple
    count: int
    batch_size: int
    bits: int  # the images' bit depth: values 0..2^bits - 1
    fingerprint: bytes
    digest: bytes
    labels: Optional[np.ndarray]  # int32 [N] when stored
    names: Optional[List[str]]  # file names of the inputs when stored
    payload: np.ndarray  # uint32 words of the range coder

    @property
    def num_dims(self) -> int:
        return self.count * int(np.prod(self.image_shape))


def pack(header: Header) -> bytes:
    """The file's bytes (the layout above), CRC-32 included."""
    extras = b""
    flags = 0
    if header.labels is not None:
        flags |= _LABELS
        extras += np.asarray(header.labels, "<i4").tobytes()
    if header.names is not None:
        flags |= _NAMES
        extras += json.dumps(list(header.names)).encode()
    extras = zlib.compress(extras, 9) if extras else b""
    flags |= (8 - header.bits) << _DEPTH_SHIFT
    payload = np.asarray(header.payload, "<u4").tobytes()
    height, width, channels = header.image_shape
    body = _FIXED.pack(MAGIC, FORMAT_VERSION, height, width, channels, header.count,
                       header.batch_size, flags, header.fingerprint, header.digest,
                       len(extras), len(payload)) + extras + payload
    return body + _CRC.pack(zlib.crc32(body))


def read_header(data: bytes, what: str = "the data") -> Header:
    """Parses and checks a compressed file (magic, version, length, checksum); raises
    CodecError naming the problem. Does not look at any model."""
    data = bytes(data)
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise CodecError(f"{what} is not a pixelcnn_tf compressed file (it does not start "
                         f"with {MAGIC!r}); give a file written by compress.py")
    if len(data) < _FIXED.size + _CRC.size:
        raise CodecError(f"{what} is truncated: {len(data)} bytes, shorter than a header; "
                         f"compress the images again")
    (_, version, height, width, channels, count, batch_size, flags, model_id, digest,
     extras_len, payload_len) = _FIXED.unpack_from(data)
    if version != FORMAT_VERSION:
        raise CodecError(f"{what} has format version {version}; this pixelcnn_tf reads "
                         f"version {FORMAT_VERSION}")
    expected = _FIXED.size + extras_len + payload_len + _CRC.size
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise CodecError(f"{what} is {state}: {len(data)} bytes, its header says "
                         f"{expected}; compress the images again")
    (crc,) = _CRC.unpack_from(data, expected - _CRC.size)
    if zlib.crc32(data[:expected - _CRC.size]) != crc:
        raise CodecError(f"{what} is corrupted (its CRC-32 does not match); compress the "
                         f"images again")
    if (channels not in (1, 3) or min(height, width, count, batch_size) < 1
            or payload_len % 4 or flags & ~(_LABELS | _NAMES | _DEPTH_MASK)):
        raise CodecError(f"{what} has an invalid header; compress the images again")
    bits = 8 - ((flags & _DEPTH_MASK) >> _DEPTH_SHIFT)
    least = count * height * width * channels * _least_bits_per_subpixel(bits)
    if 8 * payload_len + 64 < least:  # the coder's output is within 64 bits of the ideal
        raise CodecError(f"{what} claims {count:,} images but its {payload_len:,}-byte "
                         f"payload could code at most a fraction of them (even at the "
                         f"model's best, each of its {height * width * channels:,} "
                         f"sub-pixels costs {_least_bits_per_subpixel(bits):.2g} bits); it "
                         f"is damaged or forged: compress the images again")
    start = _FIXED.size
    try:
        labels, names = _unpack_extras(data[start:start + extras_len], flags, count)
    except (zlib.error, ValueError, UnicodeDecodeError):
        raise CodecError(f"{what} has an invalid header (its labels or names cannot be "
                         f"read); compress the images again") from None
    payload = np.frombuffer(data[start + extras_len:start + extras_len + payload_len],
                            "<u4").astype(np.uint32)
    return Header((height, width, channels), count, batch_size, bits, model_id, digest,
                  labels, names, payload)


def _unpack_extras(extras: bytes, flags: int, count: int):
    """The labels (int32 ``[count]``) and names (``count`` strings) stored, or None; a
    ValueError when they do not fit the header."""
    labels = names = None
    extras = zlib.decompress(extras) if extras else b""
    if flags & _LABELS:
        if len(extras) < 4 * count:
            raise ValueError("labels cut short")
        labels = np.frombuffer(extras[:4 * count], "<i4").astype(np.int32)
        extras = extras[4 * count:]
    if flags & _NAMES:
        names = json.loads(extras.decode())  # json.JSONDecodeError is a ValueError
        if (not isinstance(names, list) or len(names) != count
                or not all(isinstance(n, str) for n in names)):
            raise ValueError("names do not match the images")
    elif extras:
        raise ValueError("unexpected extras")
    return labels, names


