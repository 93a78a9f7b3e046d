"""Whether a JPEG's compressed data can fill the frame its header declares.

libjpeg does not fail when a scan's data ends early at a marker: it warns (Pillow does not pass
the warning on) and paints the rest of the frame flat grey. So a 16x16 JPEG whose header was
edited to say 1999x2001 decodes "fine" to a 4 MP grey picture. Huffman coding spends at least one
bit on every block's DC coefficient and, in a sequential scan, one more on its end-of-block (or on
its AC coefficients), so a scan with fewer bytes than that cannot be whole. Only this sure bound is
checked; a scan cut short by a few per cent still passes (libjpeg gives no other sign of it).
Arithmetic-coded and lossless JPEGs are not checked.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

_SEQUENTIAL, _PROGRESSIVE = (0xC0, 0xC1), (0xC2,)
_OTHER_FRAMES = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
# the marker that ends a scan's data: 0xFF not followed by a stuffed 0x00 or a restart marker
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")


@dataclass
class _Frame:
    progressive: bool
    width: int
    height: int
    sampling: dict  # component id -> (h, v)

    def min_bits(self, scan: bytes) -> int:
        """The fewest bits that can code the scan whose SOS header is `scan`."""
        count = scan[0]
        ids = [scan[1 + 2 * k] for k in range(count)]
        spectral_start = scan[1 + 2 * count]
        if self.progressive and spectral_start > 0:
            return 0  # an AC scan may code whole runs of blocks as one end-of-band
        bits_per_block = 1 if self.progressive else 2
        hmax = max(h for h, _ in self.sampling.values())
        vmax = max(v for _, v in self.sampling.values())
        if count == 1:  # non-interleaved: the component's own blocks
            h, v = self.sampling.get(ids[0], (1, 1))
            blocks = (math.ceil(math.ceil(self.width * h / hmax) / 8)
                      * math.ceil(math.ceil(self.height * v / vmax) / 8))
        else:  # interleaved: whole MCUs
            mcus = math.ceil(self.width / (8 * hmax)) * math.ceil(self.height / (8 * vmax))
            blocks = mcus * sum(h * v for i, (h, v) in self.sampling.items() if i in ids)
        return blocks * bits_per_block


def _frame(marker: int, segment: bytes) -> _Frame | None:
    height, width, count = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big"), segment[5]
    if not height or not width:
        return None  # a height given later by a DNL marker: not checked
    sampling = {segment[6 + 3 * k]: (segment[7 + 3 * k] >> 4, segment[7 + 3 * k] & 15) for k in range(count)}
    if not sampling or any(h == 0 or v == 0 for h, v in sampling.values()):
        return None
    return _Frame(marker in _PROGRESSIVE, width, height, sampling)


def short_scan(data: bytes) -> str | None:
    """Why the JPEG `data` cannot hold the frame its header declares, or None if it could."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, frame = 2, None
    try:
        while pos + 4 <= len(data):
            if data[pos] != 0xFF:
                return None  # not at a marker: the decoder judges
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte before a marker
                pos += 1
                continue
            if marker == 0xD9:  # end of image
                return None
            if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
                pos += 2
                continue
            length = int.from_bytes(data[pos + 2:pos + 4], "big")
            segment, pos = data[pos + 4:pos + 2 + length], pos + 2 + length
            if marker in _OTHER_FRAMES:
                return None
            if marker in _SEQUENTIAL + _PROGRESSIVE:
                frame = _frame(marker, segment)
                if frame is None:
                    return None
            elif marker == 0xDA and frame is not None:
                end = _SCAN_END.search(data, pos)
                end = end.start() if end else len(data)
                need = frame.min_bits(segment)
                if (end - pos) * 8 < need:
                    return (f"its scan data ({end - pos} bytes) is too short for the {frame.width}x{frame.height} "
                            f"frame its header declares (at least {math.ceil(need / 8)} bytes)")
                pos = end
    except IndexError:  # a segment cut short: the decoder has judged the file already
        return None
    return None
