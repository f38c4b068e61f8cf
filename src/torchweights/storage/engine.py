"""The read engine: the only code that reads tensor bytes, straight into the memory of the tensors that will hold
them.

:func:`~torchweights.storage.read.fill` and :func:`~torchweights.storage.read.materialize` describe each storage to
read as a :class:`~torchweights.storage.targets.Group` of :class:`~torchweights.storage.targets.Target` destinations
and hand the groups to one :class:`Engine`.

- The engine plans each storage's reads in file order (:meth:`Engine.jobs`) and runs them over a small thread
  pool; bytes that can land as they are go with ``preadv`` directly into their destination, and consecutive plain
  reads of one file become one vectored read per piece (:class:`_Read`).
- What cannot land as it is (a dtype cast, a big-endian file, a compressed zip member, a GPU destination, bytes
  read only for the CRC check) goes through bounded scratch buffers (:mod:`torchweights.storage.scratch`:
  :class:`IOSettings.scratch_bytes <torchweights.storage.settings.IOSettings>`, 64 MiB by default, shared by the
  threads; pinned when a CUDA tensor is filled, so host-to-device copies overlap the next reads). Views that are
  not contiguous are rebuilt from a copy of their storage (:meth:`Engine.whole`), never from a copy of the
  checkpoint.
- Fresh destination memory (tensors the load allocated) is backed just before each piece is read into it, by the
  thread that reads it (:mod:`torchweights.storage.prefault`), instead of one page fault per 4 KiB inside the read.
- Integrity: whenever a whole storage is read, its CRC-32 is computed on the bytes as they are read (per piece, in
  the reading thread, then combined) and compared with the one its zip member records (:meth:`Engine.check`);
  mismatches are collected in :class:`~torchweights.storage.results.FillResult`, for the caller to raise.
- Progress: the current :class:`~torchweights.progress.Meter` (``progress=`` of the API) is told the bytes of each
  batch once it completes, by the thread that runs the engine, never by the workers.

torch is imported inside the functions, never at import time.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import pairwise
from typing import Any

from .. import progress
from ..records import StorageRef
from ..structs import structure
from .crc import crc32, crc32_combine
from .files import MAX_VECTORS, hint, open_fd, read_ahead, read_exact
from .prefault import populate
from .results import CrcMismatch, FillResult, not_whole_elements, storage_label
from .scratch import Buffer, Scratch
from .settings import IOSettings
from .stamps import check_unchanged
from .targets import Group, Target, deliver, memory_of, swap_in_place
from .tensors import stored_view

#: Largest hole between two plain reads that one vectored read still spans (zip local headers and alignment
#: padding between members, read into a junk buffer).
_MAX_GAP = 4096


@structure
class _Read:
    """The common unit of work: file bytes ``[offset, offset + len(mem))`` straight into destination memory.

    Consecutive plain reads of one file are merged into one vectored ``preadv`` call (see :meth:`Engine.execute`),
    so a checkpoint of small tensors costs a system call per piece, not per tensor.
    """

    ref: StorageRef
    offset: int  # absolute file offset
    mem: memoryview
    ptr: int  # address of ``mem``'s first byte (for the CRC)
    crc: bool


def _plain_read(ref: StorageRef, target: Target, a: int, b: int, crc: bool) -> _Read:
    """The read of storage bytes ``[a, b)`` straight into ``target``'s memory (which must be set)."""
    assert target.mem is not None
    off = a - target.start
    return _Read(ref, ref.offset + a, target.mem[off : off + b - a], target.ptr + off, crc)


#: One unit of work and its size in bytes: a plain :class:`_Read`, or a callable returning ``(crc, length)`` of the
#: bytes it read (or None).
_Job = tuple["_Read | Callable[[], tuple[int, int] | None]", int]
_Outcome = tuple[int, int] | None


def _batches(items: list[tuple[int, int, Any]], sizes: list[int], target: int) -> list[tuple[list[Any], int]]:
    """``items`` cut into runs of about ``target`` bytes (``sizes[i]`` is item i's), each with its bytes."""
    runs: list[tuple[list[Any], int]] = []
    run: list[Any] = []
    nbytes = 0
    for item, n in zip(items, sizes):
        run.append(item)
        nbytes += n
        if nbytes >= target:
            runs.append((run, nbytes))
            run, nbytes = [], 0
    if run:
        runs.append((run, nbytes))
    return runs


class Engine:
    """Runs the reads of a list of groups over a thread pool; collects CRC results per storage."""

    def __init__(
        self,
        groups: list[Group],
        check_crc: bool,
        settings: IOSettings,
        *,
        cuda: bool = False,
        torch_work: bool = True,
    ) -> None:
        self.groups = groups
        self.check_crc = check_crc
        self.settings = settings
        self.fds: dict[str, int] = {}
        self.stats: dict[str, os.stat_result] = {}
        self.result = FillResult()
        self.lock = threading.Lock()
        pinned = False
        if cuda:
            import torch

            pinned = torch.cuda.is_available()
        self.cuda = cuda
        self.torch_work = torch_work  # some target needs torch ops (casts, swaps, copies), not only reads
        self.scratch = Scratch(settings.chunk_bytes(), settings.worker_count(), pinned)

    def fd(self, path: str) -> int:
        fd = self.fds.get(path)
        if fd is None:
            fd = self.fds[path] = open_fd(path)
            self.stats[path] = os.fstat(fd)
            if self.settings.fadvise:
                hint(fd, 0, 0, sequential=True)
        return fd

    def opened(self, ref: StorageRef) -> int:
        """The file of ``ref``, opened once per run (one ``fstat``), refused if it changed since it was opened."""
        fd = self.fd(ref.file)
        check_unchanged(fd, ref, self.stats[ref.file])
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    # -- planning ----------------------------------------------------------------------------------------------

    def wants_crc(self, ref: StorageRef) -> bool:
        return self.check_crc and ref.crc32 is not None

    def jobs(self, group: Group) -> list[_Job]:
        """The reads for one storage, in file order; each returns ``(crc, length)`` of its bytes when checked."""
        ref = group.ref
        crc = self.wants_crc(ref)
        self.opened(ref)  # opened and checked here, by the planning thread: the readers only look it up
        if len(group.targets) == 1 and self.settings.direct:  # the common case: one tensor, read in place
            t = group.targets[0]
            if t.mem is not None and t.swap == 1 and (not crc or (t.start, t.end) == (0, ref.nbytes)):
                step = self.settings.piece_size()
                ends = [(p, min(t.end, p + step)) for p in range(t.start, t.end, step)]
                return [(_plain_read(ref, t, p, q, crc), q - p) for p, q in ends]
        targets = [t for t in group.targets if t.end > t.start or not t.contiguous]
        if not targets and not crc:
            return []
        aligned = all(
            t.contiguous and t.start % t.itemsize == 0 and t.end % t.itemsize == 0 and t.start % t.swap == 0
            for t in targets
        )
        if ref.compression or not aligned:
            return [(lambda: self.whole(group, targets), ref.nbytes)]
        lo, hi = (0, ref.nbytes) if crc else (min(t.start for t in targets), max(t.end for t in targets))
        cuts = sorted({lo, hi, *(p for t in targets for p in (t.start, t.end) if lo < p < hi)})
        out: list[_Job] = []
        chunk = self.scratch.size
        # A sweep over the cuts: the targets that cover each segment, in their own order, without comparing every
        # target with every segment (thousands of pieces of one storage: a shard read row by row).
        order = sorted(range(len(targets)), key=lambda i: targets[i].start)
        active: list[int] = []
        nxt = 0
        for a, b in pairwise(cuts):
            while nxt < len(order) and targets[order[nxt]].start <= a:
                active.append(order[nxt])
                nxt += 1
            active = [i for i in active if targets[i].end >= b]
            covering = [targets[i] for i in sorted(active)]
            if not covering and not crc:
                continue
            direct = next((t for t in covering if t.mem is not None), None) if self.settings.direct else None
            others = [t for t in covering if t is not direct]
            step = self.settings.piece_size() if direct is not None else chunk
            for p in range(a, b, step):
                q = min(b, p + step)
                if direct is not None and direct.mem is not None and not others and direct.swap == 1:
                    out.append((_plain_read(ref, direct, p, q, crc), q - p))
                else:
                    out.append((self.piece_job(ref, p, q, direct, others, crc), q - p))
        return out

    def piece_job(
        self, ref: StorageRef, a: int, b: int, direct: Target | None, others: list[Target], crc: bool
    ) -> Callable[[], tuple[int, int] | None]:
        return lambda: self.piece(ref, a, b, direct, others, crc)

    # -- running -----------------------------------------------------------------------------------------------

    def execute(self, items: list[tuple[int, int, Any]]) -> list[tuple[int, int, _Outcome]]:
        """Run ``(group, job index, job)`` items in order; runs of plain reads that follow each other in one file
        (holes up to :data:`_MAX_GAP` bytes) become one vectored read."""
        out: list[tuple[int, int, _Outcome]] = []
        i = 0
        while i < len(items):
            job = items[i][2]
            if not isinstance(job, _Read):
                out.append((items[i][0], items[i][1], job()))
                i += 1
                continue
            k = i + 1
            end = job.offset + len(job.mem)
            while k < len(items) and k - i < MAX_VECTORS // 2:
                nxt = items[k][2]
                if not (isinstance(nxt, _Read) and nxt.ref.file == job.ref.file and 0 <= nxt.offset - end <= _MAX_GAP):
                    break
                end = nxt.offset + len(nxt.mem)
                k += 1
            out.extend(self.read_run(items[i:k]))
            i = k
        return out

    def read_run(self, items: list[tuple[int, int, Any]]) -> list[tuple[int, int, _Outcome]]:
        """One vectored read for plain reads of one file in file order; holes between them land in junk memory."""
        reads: list[_Read] = [job for _, _, job in items]
        first = reads[0]
        bufs: list[memoryview] = []
        end = first.offset
        for r in reads:
            gap = r.offset - end
            if gap:
                bufs.append(memoryview(bytearray(gap)))
            bufs.append(r.mem)
            end = r.offset + len(r.mem)
        what = (
            storage_label(first.ref)
            if len(reads) == 1
            else f"{storage_label(first.ref)} and the {len(reads) - 1} storages after it"
        )
        if self.settings.prefault:
            for r in reads:
                populate(r.ptr, len(r.mem))
        self.read(self.fd(first.ref.file), bufs, first.offset, first.ref, self.lookahead(), what)
        n = sum(len(r.mem) for r in reads)
        with self.lock:
            self.result.bytes_read += n
        return [(g, j, (crc32(r.mem, 0, r.ptr), len(r.mem)) if r.crc else None) for (g, j, _), r in zip(items, reads)]

    def lookahead(self) -> int:
        """How far past its own bytes a cold read hints: what the other threads will ask for next."""
        return self.settings.worker_count() * self.settings.piece_size()

    def piece(
        self, ref: StorageRef, a: int, b: int, direct: Target | None, others: list[Target], crc: bool
    ) -> tuple[int, int] | None:
        """Read storage bytes ``[a, b)`` straight into ``direct`` (or a scratch buffer) and hand them on."""
        import torch

        fd = self.fd(ref.file)
        n = b - a
        ahead = self.lookahead()
        with torch.no_grad():
            if direct is not None:
                raw = direct.byte_dst()
                assert direct.mem is not None and raw is not None
                off = a - direct.start
                mem = direct.mem[off : off + n]
                if self.settings.prefault:
                    populate(direct.ptr + off, n)
                self.read(fd, mem, ref.offset + a, ref, ahead)
                src = raw[off : off + n]
                value = crc32(mem, 0, src.data_ptr()) if crc else None
                for t in others:
                    deliver(t, a, b, src, None)
                if direct.swap > 1:
                    swap_in_place(src, direct.swap)
            else:
                buf = self.scratch.take()
                try:
                    mem = buf.mem[:n]
                    self.read(fd, mem, ref.offset + a, ref, ahead)
                    value = crc32(mem, 0, buf.raw.data_ptr()) if crc else None
                    for t in others:
                        deliver(t, a, b, buf.raw[:n], buf)
                finally:
                    self.scratch.give(buf)
        with self.lock:
            self.result.bytes_read += n
        return None if value is None else (value, n)

    def read(
        self,
        fd: int,
        mem: memoryview | list[memoryview],
        offset: int,
        ref: StorageRef,
        ahead: int,
        what: str | None = None,
    ) -> None:
        if self.settings.fadvise:
            read_ahead(fd, mem, offset, ref.file, what or storage_label(ref), ahead)
        else:
            read_exact(fd, mem, offset, ref.file, what or storage_label(ref))

    def whole(self, group: Group, targets: list[Target]) -> tuple[int, int] | None:
        """Storages read as a whole: compressed members, and storages feeding views that are not contiguous."""
        import torch

        from .raw import DEFLATED  # this path and the zip member readers: imported when a load needs them

        ref = group.ref
        crc = self.wants_crc(ref)
        strided = any(not t.contiguous for t in targets)
        with torch.no_grad():
            if ref.compression and not strided and ref.compression == DEFLATED:
                return self.inflate_streaming(ref, targets, crc)
            temp: Buffer | None = None
            if ref.nbytes <= self.scratch.size:
                temp = self.scratch.take()
                raw = temp.raw[: ref.nbytes]
            else:
                raw = self.scratch.temporary(ref.nbytes)
            try:
                mem = memory_of(raw)
                value = self.read_whole(ref, mem, raw.data_ptr())
                if crc and ref.compression == 0:
                    value = crc32(mem, 0, raw.data_ptr())
                unit = max((t.swap for t in targets), default=1)
                if unit > 1:
                    if ref.nbytes % unit:
                        raise not_whole_elements(ref, unit)
                    swap_in_place(raw, unit)
                storage = raw.untyped_storage()
                base = int(raw.storage_offset())
                for t in targets:
                    if t.record is not None and t.dst is not None:
                        view = stored_view(t.record, storage, base)  # stored values: fill applies the bits
                        if tuple(view.shape) != tuple(t.dst.shape):
                            view = view.reshape(t.dst.shape)
                        t.dst.detach().copy_(view)
                    else:
                        piece = raw[t.start : t.end]
                        raw_dst = t.byte_dst()
                        if raw_dst is not None:
                            raw_dst.copy_(piece)
                        else:
                            assert t.flat is not None
                            t.flat.copy_(piece.view(t.src_dtype))
            finally:
                if temp is not None:
                    self.scratch.give(temp)
        with self.lock:
            self.result.bytes_read += ref.compressed_size if ref.compression else ref.nbytes
        return None if not crc or value is None else (value, ref.nbytes)

    def read_whole(self, ref: StorageRef, mem: memoryview, address: int) -> int | None:
        """Fill ``mem`` with the whole decoded storage; returns the CRC-32 when inflating (computed on the way)."""
        from .compression import inflate
        from .raw import DEFLATED, bad_member, open_checked, read_member

        if ref.compression == 0:
            read_exact(self.fd(ref.file), mem, ref.offset, ref.file, storage_label(ref))
            return None
        if ref.compression == DEFLATED:
            value = 0
            with open_checked(ref) as fh:
                try:
                    for n in inflate(fh, ref.offset, ref.compressed_size, ref.nbytes, mem):
                        value = crc32(mem[:n], value, address)
                except (zlib.error, EOFError) as exc:
                    raise bad_member(ref, exc) from None
            return value
        mem[:] = read_member(ref)  # bzip2 / lzma: rare enough to inflate whole
        return crc32(mem, 0, address)

    def inflate_streaming(self, ref: StorageRef, targets: list[Target], crc: bool) -> tuple[int, int] | None:
        """Inflate a deflated member through one scratch buffer, handing each piece to the targets it covers."""
        from .compression import inflate
        from .raw import bad_member, open_checked

        hi = ref.nbytes if crc else max((t.end for t in targets), default=0)
        buf = self.scratch.take()
        value = 0
        pos = 0
        try:
            with open_checked(ref) as fh:
                try:
                    for n in inflate(fh, ref.offset, ref.compressed_size, hi, buf.mem):
                        if crc:
                            value = crc32(buf.mem[:n], value, buf.raw.data_ptr())
                        for t in targets:
                            deliver(t, pos, pos + n, buf.raw[:n], buf)
                        buf.wait()
                        pos += n
                except (zlib.error, EOFError) as exc:
                    raise bad_member(ref, exc) from None
        finally:
            self.scratch.give(buf)
        with self.lock:
            self.result.bytes_read += ref.compressed_size
        return (value, ref.nbytes) if crc else None

    def run(self) -> FillResult:
        import torch

        settings = self.settings
        saved_threads = torch.get_num_threads()
        if self.torch_work and settings.intra_op_threads and saved_threads != settings.intra_op_threads:
            torch.set_num_threads(settings.intra_op_threads)
        try:
            small = sum(g.ref.nbytes for g in self.groups) <= settings.piece_size()  # not worth threads
            outcomes: list[list[_Outcome]] = []
            meter = progress.current()
            if small or settings.worker_count() == 1:
                items: list[tuple[int, int, Any]] = []
                sizes: list[int] = []
                for g, group in enumerate(self.groups):
                    group.prepare()
                    jobs = self.jobs(group)
                    outcomes.append([None] * len(jobs))
                    items += [(g, j, job) for j, (job, _) in enumerate(jobs)]
                    sizes += [n for _, n in jobs]
                if meter is None or small:
                    runs = [(items, sum(sizes))]
                else:  # in pieces, so that progress is told between them (a run merges only its own reads)
                    runs = _batches(items, sizes, settings.piece_size())
                if meter is not None:
                    meter.grow(sum(sizes))
                for run, nbytes in runs:
                    for g, j, value in self.execute(run):
                        outcomes[g][j] = value
                    if meter is not None:
                        meter.advance(nbytes)
            else:
                outcomes = self.run_pool(settings.worker_count())
            if self.cuda and torch.cuda.is_available():
                torch.cuda.synchronize()
        finally:
            if torch.get_num_threads() != saved_threads:
                torch.set_num_threads(saved_threads)
            self.close()
        for group, parts in zip(self.groups, outcomes):
            self.check(group, parts)
        return self.result

    def run_pool(self, workers: int) -> list[list[_Outcome]]:
        """Plan each storage just before its reads are queued, so the first reads start at once; small reads are
        queued in batches of about one piece, so a thread's wake-up (and, for plain reads, a system call) is paid
        per piece, not per tensor."""
        outcomes: list[list[_Outcome]] = []
        futures: list[Future[list[tuple[int, int, _Outcome]]]] = []
        batch: list[tuple[int, int, Any]] = []
        size = 0
        target = self.settings.piece_size()
        run_batch = self.execute

        meter = progress.current()  # told by this thread as batches complete, never by the workers
        sizes: list[int] = []
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="torchweights-read") as pool:
            try:
                for g, group in enumerate(self.groups):
                    group.prepare()
                    jobs = self.jobs(group)
                    outcomes.append([None] * len(jobs))
                    for j, (job, n) in enumerate(jobs):
                        batch.append((g, j, job))
                        size += n
                        if size >= target:
                            futures.append(pool.submit(run_batch, batch))
                            sizes.append(size)
                            batch, size = [], 0
                if batch:
                    futures.append(pool.submit(run_batch, batch))
                    sizes.append(size)
                if meter is not None:
                    meter.grow(sum(sizes))
                for future, nbytes in zip(futures, sizes):
                    for g, j, value in future.result():
                        outcomes[g][j] = value
                    if meter is not None:
                        meter.advance(nbytes)
                return outcomes
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def check(self, group: Group, parts: list[tuple[int, int] | None]) -> None:
        ref = group.ref
        if not self.wants_crc(ref) or ref.crc32 is None:
            return
        pieces = [p for p in parts if p is not None]
        if sum(n for _, n in pieces) != ref.nbytes:
            return  # not the whole storage (nothing needed it): nothing to compare
        value = 0
        for crc, n in pieces:
            value = crc32_combine(value, crc, n)
        self.result.crc_checked += 1
        if value != ref.crc32:
            self.result.bad_crc.append(CrcMismatch(ref, ref.crc32, value, tuple(group.names)))
