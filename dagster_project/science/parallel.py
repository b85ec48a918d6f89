"""Thread-level parallelism for the array work of the science layer.

The heavy loops used here (``scipy.ndimage`` transforms, astroscrappy's
median filters, NumPy arithmetic) release the GIL, so an image cut into row
blocks is processed on every core by plain threads, without copying data to
other processes.
"""

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["BLOCK_ELEMENTS", "MAX_THREADS", "RowBlocks", "n_threads", "row_blocks", "run_threads", "threads_for"]

#: Cap on the threads of one call (measured on 2 cores only): each row block of a 2048-px
#: image still spans 500 rows, far more than the overlap a block may need.
MAX_THREADS = 4
#: Elements per block of rows in the element-wise passes: few enough for a block's arrays (<= 8
#: bytes an element) to stay in cache, enough to amortise the overhead of each NumPy call.
BLOCK_ELEMENTS = 1 << 16


def n_threads() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count), at most ``MAX_THREADS``."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, MAX_THREADS))


def row_blocks(n_rows: int, n_blocks: int) -> list[tuple[int, int]]:
    """``n_blocks`` (fewer if ``n_rows`` is small) contiguous ``(start, stop)`` row ranges covering ``n_rows``."""
    n_blocks = max(1, min(n_blocks, n_rows))
    edges = [round(i * n_rows / n_blocks) for i in range(n_blocks + 1)]
    return list(zip(edges[:-1], edges[1:]))


def run_threads(function: Callable, items: Sequence) -> list:
    """``[function(item) for item in items]`` evaluated in threads (in the caller's thread for one item)."""
    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(min(len(items), n_threads())) as pool:
        return list(pool.map(function, items))


def threads_for(workers: int) -> int:
    """Threads for ``workers`` with the convention of :mod:`scipy.fft` (-1: all usable cores as
    :func:`n_threads` counts them, -2: all but one...)."""
    return workers if workers > 0 else max(1, n_threads() + 1 + workers)


class RowBlocks:
    """Runs element-wise work over blocks of rows in ``threads`` threads, the caller's included.

    NumPy releases the GIL in its loops, so blocks run in parallel; the
    threads take the next free block, so a thread slowed by other load
    does less. A block's temporaries stay in cache, where full-size ones
    would each cost fresh zero-filled pages. Use as a context manager.
    """

    def __init__(self, threads: int):
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads - 1) if threads > 1 else None
        self._local = threading.local()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._executor is not None:
            self._executor.shutdown()

    def run(self, func, n_rows: int, width: int, multiple: int = 1) -> None:
        """Call ``func(rows)`` on consecutive row slices covering ``n_rows`` rows.

        A slice holds about ``BLOCK_ELEMENTS`` elements of a ``width``-wide
        array, in whole multiples of ``multiple`` rows.
        """
        step = max(1, BLOCK_ELEMENTS // (width * multiple)) * multiple
        blocks = iter([slice(r, min(r + step, n_rows)) for r in range(0, n_rows, step)])

        def work():
            for rows in blocks:  # next() on a list iterator is atomic: each block goes to one thread
                func(rows)

        helpers = [self._executor.submit(work) for _ in range(self.threads - 1)] if self._executor else []
        try:
            work()
        finally:
            for helper in helpers:
                helper.result()

    def scratch(self, count: int, shape: tuple[int, ...], dtype) -> np.ndarray:
        """``count`` arrays of ``shape`` and ``dtype`` (any contents), private to the calling thread.

        Kept from block to block: freed and allocated again, temporaries
        may go back to the system each time and return as fresh pages. One
        call per dtype in a block: a second returns the same memory.
        """
        arrays = self._local.__dict__.setdefault("arrays", {})
        size = count * int(np.prod(shape))
        key = np.dtype(dtype).str
        if key not in arrays or arrays[key].size < size:
            arrays[key] = np.empty(size, dtype=dtype)
        return arrays[key][:size].reshape(count, *shape)
