"""Memory-mapped weights: drop the pages a scan or a fold has read, scan a weight in blocks.

onnx-ir maps external data read-only. Reading a mapped weight keeps its pages resident in this
process until the map is closed, so folding a 2 GB model would end up holding 2 GB. These
helpers give such pages back as they go; for any other array they do nothing.
"""

from __future__ import annotations

import mmap

import numpy as np

try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # pragma: no cover (numpy < 2)
    from numpy import byte_bounds  # type: ignore[attr-defined,no-redef]

# Elements per block when scanning a weight (small enough to stay in a CPU cache).
SCAN_ELEMENTS = 1 << 18
_PAGE = mmap.PAGESIZE


def _mapped_file(a: np.ndarray) -> mmap.mmap | None:
    """The read-only memory-mapped file ``a`` views (an onnx-ir ExternalTensor's), if any."""
    base: object = a
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer(mmap) keeps a memoryview of the map
        if not base.readonly:
            return None
        base = base.obj
    if not isinstance(base, mmap.mmap) or base.closed:
        return None
    with memoryview(base) as view:
        return base if view.readonly else None  # ACCESS_READ: clean pages, safe to drop


def release_pages(a: np.ndarray) -> None:
    """Unmap the resident pages of a read-only file mapping behind ``a``; no-op for other arrays.

    ``MADV_DONTNEED`` on a read-only shared file mapping only drops the pages from this
    process's page tables: the data stays valid and is read again (page cache or file) on the
    next access. Never applied to anonymous or writable memory, where it would lose data.
    """
    if a.size == 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    mm = _mapped_file(a)
    if mm is None:
        return
    try:
        start = np.frombuffer(mm, dtype=np.uint8, count=1).ctypes.data
        lo, hi = byte_bounds(a)
        first = max(0, (lo - start) // _PAGE * _PAGE)
        end = min(len(mm), hi - start)
        if end > first:
            mm.madvise(mmap.MADV_DONTNEED, first, end - first)
    except (OSError, ValueError, TypeError):
        pass  # only a memory optimisation


def max_abs(w: np.ndarray) -> float:
    """``max |w|`` (NaN if any is NaN), block by block, releasing mapped pages as it goes."""
    if not w.flags.c_contiguous:
        return float(np.max(np.abs(w), initial=0.0))
    flat = w.reshape(-1)
    peaks = [0.0]
    span = 64 * SCAN_ELEMENTS  # release pages every 64 blocks (fewer system calls)
    for i in range(0, flat.size, SCAN_ELEMENTS):
        peaks.append(float(np.max(np.abs(flat[i : i + SCAN_ELEMENTS]))))
        end = i + SCAN_ELEMENTS
        if end % span == 0 or end >= flat.size:
            release_pages(flat[max(0, end - span) : end])
    return float(np.max(peaks))
