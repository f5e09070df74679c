"""THE chunk loop every cohort run goes through: padding, device sharding, donated output
buffers, the writer thread, resume and progress, written once.

A run hands :func:`run_batches` a compiled :class:`BatchSolver` and its per-patient inputs (any
pytree of host arrays with the patient axis first). The cohort is cut into chunks of
``chunk_size`` patients; each chunk is padded to the solver's batch shape (so one compiled
program serves every chunk), solved asynchronously, and handed to a sink on a background thread
while the next chunks compute, so memory stays flat and a store never holds a torn chunk.
Engines (:mod:`cohort.engine.simulate`) and closed-loop runs built on the engine
are thin adapters that provide the batch solve and the sink.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import math
import threading
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

from cohort.engine.status import Status
from cohort.timing import waited

MAX_IN_FLIGHT = 3  # batches solved or queued ahead of the writer
IN_FLIGHT_BYTES = 256 * 2**20  # ... fewer when their outputs would exceed this much memory

Blocks = dict[str, list[tuple[int, np.ndarray]]]


class BatchRun(Protocol):
    """A batch solve as an engine writes it: per-patient ``inputs`` (leaves ``[B, ...]``) and
    batch-wide ``shared`` inputs -> ``(outputs, status, extras)``: time-major outputs
    ``{name: [T', B]}``, ``status [B]`` (:class:`Status` codes) and per-patient scalars
    ``{name: [B]}`` (e.g. glycaemic metrics), computed in the same pass."""

    def __call__(self, inputs: Any, shared: Any) -> tuple[dict, jax.Array, dict]: ...


class Sink(Protocol):
    """Receives each finished batch on the writer thread: ``k`` the chunk index, ``lo:hi`` its
    patients, ``blocks[output]`` each device's ``(first patient, [T, patients] view)`` (views of
    device buffers: copy what you keep), ``status [hi - lo]`` int8 and ``extras`` (numpy,
    trimmed to ``hi - lo``)."""

    def __call__(
        self, k: int, lo: int, hi: int, blocks: Blocks, status: np.ndarray, extras: dict
    ) -> None: ...


LANES = 16  # each device's share is padded to a multiple of this (see batch_shape)
MEMORY_FRACTION = 0.25  # of the memory available at the start, for a run's batches


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``; None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_chunk(default: int, bytes_per_patient: int) -> int:
    """``default`` patients per batch, fewer when that many would not fit: the batches a run
    holds at once (solved and queued, plus the writer's staging copy) stay within
    :data:`MEMORY_FRACTION` of the available memory. Only long save grids or many outputs
    hit it (289 times x 2 float32 outputs take 2.3 kB per patient; 100,000 times take 800 kB),
    and it rounds down to a power of two so that the same machine picks the same size."""
    avail = available_memory()
    if avail is None or bytes_per_patient <= 0:
        return default
    fit = int(MEMORY_FRACTION * avail) // ((MAX_IN_FLIGHT + 1) * bytes_per_patient)
    if fit >= default:
        return default
    return max(1, 1 << max(0, fit.bit_length() - 1))


def default_chunk(
    default: int, bytes_per_patient: int, out: Any = None, resume: bool = False
) -> int:
    """Patients per batch when the user gives none: a resumed run continues with the
    batches of its store (whatever the default would be now), others take ``default``
    bounded by memory (:func:`memory_chunk`)."""
    if resume and out is not None:
        from cohort.store.zarr_store import stored_chunk_size

        stored = stored_chunk_size(out)
        if stored:
            return stored
    return memory_chunk(default, bytes_per_patient)


def batch_shape(chunk_size: int, max_devices: int | None = None) -> tuple[int, int]:
    """``(devices, padded batch)`` for batches of ``chunk_size`` patients: every local device
    (at most ``max_devices``) takes an equal share, padded up to :func:`bucket` rows.

    Multiples of :data:`LANES`: XLA's CPU code runs the vectorised body of an elementwise loop
    over whole vectors and a scalar remainder over the rest, whose exp/log round differently:
    without the padding a patient's result depended on where its batch ended, i.e. on the
    chunk size and the device count (1 ulp on ~1,000 of 290,000 values of a fast-path run
    with chunks of 75 vs 76, measured); a batch axis of size 1 is specialised the same way.
    The coarser ladder lets cohorts of nearby sizes share one compiled (and cached) program;
    beyond 64 rows per device at most 25 % of a batch is padding."""
    n_dev = max(1, min(len(jax.local_devices()), chunk_size, max_devices or chunk_size))
    per_device = bucket(max(2, math.ceil(chunk_size / n_dev)))
    return n_dev, per_device * n_dev


def bucket(rows: int) -> int:
    """``rows`` rounded up on the ladder 16, 32, 48, 64, then four steps per doubling
    (80, 96, 112, 128, 160, 192, 224, 256, 320, ...): multiples of :data:`LANES`."""
    if rows <= 4 * LANES:
        return LANES * math.ceil(rows / LANES)
    step = (1 << (rows - 1).bit_length()) // 8  # a quarter of the power of two below
    return step * math.ceil(rows / step)


class BatchSolver:
    """A compiled batch solve, its patient axis split over ``n_devices`` local devices
    (``shard_map``: each device solves its own patients, no communication; e.g. one XLA CPU
    device per core or several GPUs), writing its outputs into the donated buffers of an
    earlier batch. Each fresh output buffer is new memory that the OS faults in page by page;
    on CPU that cost as much as the closed form's arithmetic (measured: the float64
    closed-form solves of 100,000 patients took 72-84 ms into fresh buffers, 55 ms into
    reused ones). A buffer still viewed from numpy is not donated (JAX then allocates a new
    one), so a forgotten view costs speed, never data."""

    def __init__(
        self,
        run: BatchRun,
        n_devices: int = 1,
        cache_key: str | None = None,
        compiler_options: dict[str, Any] | None = None,
        host_inputs: Callable[[Any, Any], Any] | None = None,
    ):
        devices = jax.local_devices()[:n_devices]
        if n_devices > 1:
            mesh = jax.sharding.Mesh(np.array(devices), ("patient",))
            by_patient = jax.sharding.PartitionSpec("patient")
            time_major = jax.sharding.PartitionSpec(None, "patient")
            run = jax.shard_map(
                run,
                mesh=mesh,
                in_specs=(by_patient, jax.sharding.PartitionSpec()),
                out_specs=(time_major, by_patient, by_patient),
                check_vma=False,  # patients are independent: no collectives to type-check
            )
            out_sharding = jax.sharding.NamedSharding(mesh, time_major)
            # how a stored program is called: patients split, settings whole, buffers as made
            self._call_shardings = (
                jax.sharding.NamedSharding(mesh, by_patient),
                jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
                out_sharding,
            )
        else:
            out_sharding = jax.sharding.SingleDeviceSharding(devices[0])
            self._call_shardings = None
        self.n_devices = n_devices
        self.inner = jax.jit(run)  # the plain solve (inputs, shared) -> (outs, status, extras)
        self._out_sharding = out_sharding
        self._cache_key = cache_key
        self._compiler_options = dict(compiler_options or {})
        # (batch rows, shared) -> the inputs the program takes, computed on the host per batch:
        # e.g. random draws keyed by patient id, which inside the program would add a
        # random-bits compilation and outside it would be held for the whole cohort at once
        self._host_inputs = host_inputs
        # input signature -> Future of (compiled batch program, output buffer spec): a program
        # being built on one thread (see `compile`) is waited for, not built twice
        self._programs: dict[Any, concurrent.futures.Future] = {}
        self._lock = threading.Lock()

        def into(inputs, shared, buffers):
            out, status, extras = self.inner(inputs, shared)
            return {o: buffers[o].at[...].set(v) for o, v in out.items()}, status, extras

        self._into = jax.jit(into, donate_argnums=2)

    def __call__(self, inputs: Any, shared: Any, buffers: dict | None):
        """Solve a batch into ``buffers`` (outputs of an earlier batch of the same shape, which
        become invalid), or into new ones when ``buffers`` is None."""
        inputs = self._expand(inputs, shared)
        program, spec = self._compile(inputs, shared)
        if buffers is None:
            # from host zeros rather than a jitted jnp.zeros, whose XLA compile (~0.06 s, too
            # quick for the persistent cache) every fresh process paid
            buffers = {o: jax.device_put(np.zeros(shape, dtype), self._out_sharding)
                       for o, shape, dtype in spec}  # fmt: skip
        return program(inputs, shared, buffers)

    def compile(self, inputs: Any, shared: Any) -> tuple[Callable, tuple]:
        """The compiled batch program for inputs shaped like these (arrays or
        ``jax.ShapeDtypeStruct``s) and its output buffers' spec, built now if no call has built
        it. Thread-safe: a caller can build it on a background thread while it prepares the
        batches (XLA compiles on one core; the closed-loop CLI overlaps it with patient
        sampling), and a batch arriving meanwhile waits for that build instead of repeating
        it."""
        return self._compile(self._expand(inputs, shared), shared)

    def _expand(self, inputs: Any, shared: Any) -> Any:
        """A batch's rows as the program takes them (``host_inputs`` applied)."""
        return inputs if self._host_inputs is None else self._host_inputs(inputs, shared)

    def _compile(self, inputs: Any, shared: Any) -> tuple[Callable, tuple]:
        sig = _signature(inputs, shared)
        while True:
            with self._lock:
                entry = self._programs.get(sig)
                build = entry is None
                if build:
                    entry = self._programs[sig] = concurrent.futures.Future()
            if build:
                try:
                    finish, spec = self._lowered(inputs, shared)
                    entry.set_result((finish(), spec))
                except BaseException as exc:
                    self._failed(sig, entry, exc)
                    raise
            try:
                return entry.result()
            except Exception:
                if build:
                    raise
                # another thread's build failed: build here (its error is then our own)

    def compile_behind(self, inputs: Any, shared: Any) -> None:
        """Trace and lower the program for inputs shaped like these now, and let XLA compile
        it on a background thread (it holds no Python lock), so that the caller's own Python
        work meanwhile (a store's layout, imports) costs no wall time; :meth:`compile` and
        calls wait for it. Errors of the tracing are raised here, those of XLA by the first
        call. A caller that gives up before calling waits with :meth:`settle`."""
        inputs = self._expand(inputs, shared)
        sig = _signature(inputs, shared)
        with self._lock:
            if sig in self._programs:
                return
            entry = self._programs[sig] = concurrent.futures.Future()
        try:
            finish, spec = self._lowered(inputs, shared)
            compiled: list = []
            # the caller waits for this compile (it only overlaps its own Python work): its
            # time is the caller's compile time, recorded before the caller can see the
            # program (and report its time); wrapped here, on the caller's thread, whose
            # record it joins
            compile_it = waited(lambda: compiled.append(finish()))

            def build() -> None:
                try:
                    compile_it()
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                    self._failed(sig, entry, exc)
                    return
                entry.set_result((compiled[0], spec))

            threading.Thread(target=build, name="compile-behind", daemon=True).start()
        except BaseException as exc:
            self._failed(sig, entry, exc)
            raise

    def settle(self) -> None:
        """Wait for the programs being compiled on other threads (their errors ignored: the
        next call raises them): a process that exits while XLA compiles on a daemon thread
        aborts in C++ ("terminate called ...")."""
        with self._lock:
            pending = list(self._programs.values())
        concurrent.futures.wait(pending)

    def _failed(self, sig, entry: concurrent.futures.Future, exc: BaseException) -> None:
        with self._lock:
            if self._programs.get(sig) is entry:
                del self._programs[sig]
        if not entry.done():
            entry.set_exception(exc)

    def _buffer_structs(self, spec: tuple) -> dict:
        return {o: jax.ShapeDtypeStruct(shape, dtype, sharding=self._out_sharding)
                for o, shape, dtype in spec}  # fmt: skip

    def _lowered(self, inputs: Any, shared: Any) -> tuple[Callable[[], Callable], tuple]:
        """The batch program for inputs shaped like these, traced and lowered, as a function
        that compiles it (XLA's part, which :meth:`compile_behind` runs on another thread), and
        its output buffers' spec: the jitted solve, or with a ``cache_key`` (and the
        compilation cache on) the stored trace of an earlier process
        (:mod:`cohort.engine.exported`), stored now when missing."""
        from cohort.engine import exported

        key = None
        if self._cache_key is not None and exported.folder() is not None:
            key = exported.program_key(self._cache_key, (inputs, shared), self.n_devices)
        stored = exported.load(key) if key is not None else None
        n_inputs = len(jax.tree.leaves(inputs))
        tree = jax.tree.structure((inputs, shared))
        if stored is None:
            shapes = jax.eval_shape(self.inner, inputs, shared)[0]
            spec = tuple((o, s.shape, str(s.dtype)) for o, s in shapes.items())
            if key is None:
                lowered = self._into.lower(inputs, shared, self._buffer_structs(spec))
                return functools.partial(self._compiled, lowered), spec

            def flat(leaves, buffers):  # plain lists of arrays: any input pytree serializes
                return self._into(*jax.tree.unflatten(tree, leaves), buffers)

            like = self._buffer_structs(spec)
            try:
                stored = jax.export.export(jax.jit(flat, donate_argnums=1))(
                    jax.tree.leaves((inputs, shared)), like
                )
            except Exception:  # a construct jax.export refuses: run it as a plain jit
                lowered = self._into.lower(inputs, shared, like)
                return functools.partial(self._compiled, lowered), spec
            exported.save(key, stored)
        out = jax.tree.unflatten(stored.out_tree, stored.out_avals)[0]
        spec = tuple((o, a.shape, str(a.dtype)) for o, a in out.items())
        if self._call_shardings is None:
            call = jax.jit(stored.call, donate_argnums=1)
        else:
            by_patient, whole, buffers = self._call_shardings
            leaves = [by_patient] * n_inputs + [whole] * (tree.num_leaves - n_inputs)
            call = jax.jit(stored.call, in_shardings=(leaves, buffers), donate_argnums=1)
        args = (jax.tree.leaves((inputs, shared)), self._buffer_structs(spec))
        lowered = exported.lower(call, stored, *args)

        def finish() -> Callable:
            compiled = self._compiled(lowered)

            def program(inputs, shared, buffers):
                return compiled(jax.tree.leaves((inputs, shared)), buffers)

            return program

        return finish, spec

    def _compiled(self, lowered: Any) -> Callable:
        """``lowered`` compiled with the engine's XLA options; with XLA's defaults when this
        XLA no longer knows an option (they are speed settings, never needed for a result)."""
        if self._compiler_options:
            try:
                return lowered.compile(compiler_options=self._compiler_options)
            except RuntimeError as exc:  # JAX's JaxRuntimeError (XlaRuntimeError before)
                if "No such compile option" not in str(exc):
                    raise
        return lowered.compile()


def _signature(inputs: Any, shared: Any) -> tuple:
    """What a compiled batch program depends on: the inputs' structure, shapes and dtypes."""
    leaves, tree = jax.tree.flatten((inputs, shared))
    return tree, tuple((tuple(np.shape(v)), str(_dtype(v))) for v in leaves)


def _dtype(leaf: Any) -> np.dtype:
    """The dtype of an array, ``jax.ShapeDtypeStruct`` or Python scalar leaf."""
    return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.result_type(leaf)


def padded_rows(inputs: Any, lo: int, hi: int, batch: int) -> Any:
    """Rows ``lo:hi`` of every leaf, padded to ``batch`` rows by repeating the last one (views
    when no padding is needed)."""
    if hi - lo == batch:
        return jax.tree.map(lambda v: v[lo:hi], inputs)
    pad = np.concatenate([np.arange(lo, hi), np.full(batch - (hi - lo), hi - 1)])
    return jax.tree.map(lambda v: v[pad], inputs)


def chunk_count(n_patients: int, chunk_size: int) -> int:
    return max(1, math.ceil(n_patients / chunk_size))


def run_batches(
    solver: BatchSolver,
    inputs: Any,
    shared: Any,
    *,
    n_patients: int,
    chunk_size: int,
    n_times: int,
    out_bytes: int,
    sink: Sink,
    done: np.ndarray | None = None,
    invalid: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Solve every chunk not yet ``done`` and hand it to ``sink`` on a background thread while
    later chunks compute.

    ``n_times`` rows of each time-major output are kept (an engine may compute more);
    ``out_bytes`` is the size of one batch's outputs (bounds the batches in flight);
    ``invalid [N]`` marks patients whose inputs failed their checks: they are solved (with
    harmless stand-in values) and reported as ``INVALID_PARAMETERS``.
    """
    cs = chunk_size
    n_chunks = chunk_count(n_patients, cs)
    done = np.zeros(n_chunks, bool) if done is None else done
    n_dev, batch = batch_shape(cs, solver.n_devices)
    if n_dev != solver.n_devices:
        raise ValueError(f"solver built for {solver.n_devices} devices, batches need {n_dev}")
    finished = int(sum(min(cs, n_patients - k * cs) for k in range(n_chunks) if done[k]))
    if progress:
        progress(finished, n_patients)
    max_in_flight = max(1, min(MAX_IN_FLIGHT, IN_FLIGHT_BYTES // max(1, out_bytes)))
    queued: collections.deque = collections.deque()  # solved batches not yet being written
    free: collections.deque = collections.deque()  # output buffers of written batches

    def report(pending):
        """Wait for the write in progress, report it, start the next queued one (if any)."""
        nonlocal finished
        m, outs = pending.result()
        free.append(outs)
        finished += m
        if progress:
            progress(finished, n_patients)
        return pool.submit(queued.popleft()) if queued else None

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for k in range(n_chunks):
            if done[k]:
                continue
            lo, hi = k * cs, min((k + 1) * cs, n_patients)
            # Host arrays: jit places them on the device(s) itself (sharded when n_dev > 1).
            slots = free.popleft() if free else None  # a written batch's output buffers
            outs, status, extras = solver(padded_rows(inputs, lo, hi, batch), shared, slots)

            def write(k=k, lo=lo, hi=hi, outs=outs, status=status, extras=extras):
                m = hi - lo
                st = np.asarray(status)[:m]
                if invalid is not None:
                    st = np.where(invalid[lo:hi], int(Status.INVALID_PARAMETERS), st)
                blocks = {o: device_blocks(v, m, n_times) for o, v in outs.items()}
                ex = {name: np.asarray(v)[:m] for name, v in extras.items()}
                sink(k, lo, hi, blocks, st.astype(np.int8), ex)
                return m, outs  # the views into ``outs`` are gone: its buffers can be reused

            queued.append(write)
            if pending is None:
                pending = pool.submit(queued.popleft())
            # Solves are dispatched asynchronously: up to max_in_flight batches are solved or
            # queued ahead of the writer, so the devices do not wait for it (e.g. while it
            # faults in the first pages of the result) and memory stays bounded. Writes are
            # submitted one at a time: when a progress callback raises, nothing after the
            # batch just reported has been written.
            while len(queued) >= max_in_flight:
                pending = report(pending)
        while pending is not None:
            pending = report(pending)


def device_blocks(v: jax.Array, m: int, n_times: int) -> list[tuple[int, np.ndarray]]:
    """``(first patient, [T, patients] view)`` of each device's block of a time-major batch
    output ``v [T', N]``, trimmed to the first ``m`` patients and ``n_times`` rows. The views
    alias the device buffers (CPU), so the sink's copy is the only one (``np.asarray(v)`` of a
    sharded array would first gather it into a new array)."""
    blocks = []
    for shard in v.addressable_shards:
        start = shard.index[1].start or 0
        data = np.asarray(shard.data)
        stop = min(start + data.shape[1], m)
        if stop > start:
            blocks.append((start, data[:n_times, : stop - start]))
    return blocks


def patient_major(blocks: list[tuple[int, np.ndarray]], out: np.ndarray) -> np.ndarray:
    """Copy a batch's time-major device blocks into the patient-major ``out [m, T]``."""
    for start, block in blocks:
        np.copyto(out[start : start + block.shape[1]], block.T)
    return out
