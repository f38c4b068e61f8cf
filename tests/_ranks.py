"""Run a function on several gloo ranks from inside one test: forked processes, a fresh FileStore per run,
``OMP_NUM_THREADS=1``, a deadline for the whole run, and every child killed when it passes or when one rank fails.

``run_ranks(fn, world, *args)`` calls ``fn(rank, world, *args)`` in ``world`` forked children after
``init_process_group("gloo")`` and returns each rank's (picklable) return value, in rank order. A rank that raises
sends its traceback back; the test then fails with it. Fork is used (spawn was flaky on these machines), so ``fn``
may be a closure or a local function; torch must not have started threads that a fork would break (CPU tensors
only, set before forking).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["RankFailure", "run_ranks"]

#: Seconds a whole multi-rank run may take before every child is killed and the test fails.
DEADLINE = 90.0


class RankFailure(AssertionError):
    """A rank raised, died or did not finish in time."""


def _child(
    fn: Callable[..., Any], rank: int, world: int, store: str, results: Any, args: tuple[Any, ...]
) -> None:  # pragma: no cover - runs in the forked child
    os.environ["OMP_NUM_THREADS"] = "1"
    warnings.simplefilter("ignore")
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo",
            store=dist.FileStore(store, world),
            rank=rank,
            world_size=world,
            timeout=__import__("datetime").timedelta(seconds=DEADLINE),
        )
        try:
            value = fn(rank, world, *args)
        finally:
            dist.destroy_process_group()
        # Plain pickle bytes: tensors then travel by value (the queue's own pickler would pass shared memory
        # that dies with this process), and an unpicklable result fails here, with its traceback.
        results.put((rank, True, pickle.dumps(value)))
    except BaseException:  # everything goes back to the test, DCP's CheckpointException included
        results.put((rank, False, traceback.format_exc()))
    finally:
        results.close()
        results.join_thread()
        os._exit(0)


def run_ranks(fn: Callable[..., Any], world: int, *args: Any, deadline: float = DEADLINE) -> list[Any]:
    """``[fn(0, world, *args), ..., fn(world - 1, world, *args)]``, each run in its own forked gloo rank."""
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="tw-ranks-") as tmp:
        store = os.path.join(tmp, "store")  # a fresh rendezvous for every run
        children = [ctx.Process(target=_child, args=(fn, r, world, store, results, args)) for r in range(world)]
        for child in children:
            child.start()
        got: dict[int, tuple[bool, Any]] = {}
        end = time.monotonic() + deadline
        try:
            while len(got) < world:
                left = end - time.monotonic()
                if left <= 0:
                    raise RankFailure(f"ranks {sorted(set(range(world)) - set(got))} did not finish in {deadline} s")
                try:
                    rank, ok, value = results.get(timeout=min(left, 1.0))
                except queue.Empty:
                    dead = [r for r, c in enumerate(children) if r not in got and c.exitcode not in (None, 0)]
                    if dead:
                        codes = [children[r].exitcode for r in dead]
                        raise RankFailure(f"ranks {dead} died (exit codes {codes})") from None
                    continue
                got[rank] = (ok, value)
                if not ok:
                    raise RankFailure(f"rank {rank} raised:\n{value}")
        finally:
            for child in children:
                child.join(timeout=0.5 if len(got) == world else 0)
                if child.is_alive():
                    child.kill()
                    child.join()
            results.close()
    return [pickle.loads(got[r][1]) for r in range(world)]
