"""Thread-level parallelism for the array work of the science layer.

The heavy loops used here (``scipy.ndimage`` transforms, astroscrappy's
median filters, NumPy arithmetic) release the GIL, so an image cut into row
blocks is processed on every core by plain threads, without copying data to
other processes.
"""

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

#: Cap on the threads of one call (measured on 2 cores only): each row block of a 2048-px
#: image still spans 500 rows, far more than the overlap a block may need.
MAX_THREADS = 4


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
