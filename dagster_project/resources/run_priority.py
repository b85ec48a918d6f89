"""The CPU priority of a run worker, by the lane of its run (``pipeline/jobs.py``).

A frame's first processing (the prompt lane) and remaking what exists (the redo lane: differences against
a newer reference, deeper references, product rebuilds) share the machine's cores. The run queue already
puts prompt runs first and holds back new redo runs while any prompt run is queued or running; this is
what keeps a redo run that was already running from slowing a frame that lands: its process gives itself
a lower CPU priority (``ASTRO_BACKGROUND_NICENESS``), so the kernel hands the cores to the prompt run
first and to the redo run whatever is left (all of them when nothing else runs).

A run worker also freezes its heap for the garbage collector when its run is set up (``gc.freeze``):
Dagster, the definitions and the run's context then stay out of every collection the science's
temporaries set off.

The priority is lowered once, when the resource is set up for a run, and only in a process that runs
nothing else afterwards: a run worker of the daemon's run launcher, or a step process of the multiprocess
executor. The headless ``process`` command (which runs everything in one process) and Celery workers
(which run many runs' steps) are built with ``own_process=False``: lowering a priority cannot be undone
without privileges, and a heap frozen there would keep each run's garbage.
"""

import gc
import os

from dagster import ConfigurableResource, InitResourceContext

from dagster_project.pipeline.jobs import LANE_TAG, REDO_LANE
from dagster_project.settings import Settings

__all__ = ["RunPriorityResource", "lower_process_priority"]


class RunPriorityResource(ConfigurableResource):
    """In a process of the run's own (``own_process``): freezes the heap for the garbage collector, and lowers
    the CPU priority of a redo-lane run to ``background_niceness`` (0: never)."""

    background_niceness: int = Settings.background_niceness
    own_process: bool = True

    def setup_for_execution(self, context: InitResourceContext) -> None:
        if not self.own_process:
            return
        if not gc.get_freeze_count():
            # a process of its own: what it imported and built (Dagster, the definitions, the run's context) lives
            # as long as it does, and the garbage collector need not walk it at every collection of the science's
            # temporaries (benchmarks/night_throughput.py, 30 frames of 2048 px: 96.1 s -> 84.7 s)
            gc.freeze()
        run = context.dagster_run
        if self.background_niceness and run is not None and run.tags.get(LANE_TAG) == REDO_LANE[LANE_TAG]:
            niceness = lower_process_priority(self.background_niceness)
            if context.log is not None:
                context.log.info(f"redo lane: this run's process runs at nice {niceness}, behind prompt work")


def lower_process_priority(niceness: int) -> int:
    """Give every thread of this process (``nice`` is per thread on Linux, and NumPy's or a co-add's worker
    threads may exist already) at least ``niceness``; returns the process's nice value after."""
    threads = [int(tid) for tid in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
    for thread in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, thread) < niceness:
                os.setpriority(os.PRIO_PROCESS, thread, niceness)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    return os.getpriority(os.PRIO_PROCESS, 0)
