"""Host batches onto the devices from a background thread, two steps ahead.

The training thread only takes finished device arrays from a queue: the host batch
that the input pipeline assembled (``image uint8 [host_batch, S, S, 3]``, ``label int32
[host_batch]``) is viewed as ``[local_devices, per_device_batch, ...]`` (a reshape of a
C-contiguous array: no copy) and put on the local devices with one sharded
``jax.device_put`` (``NamedSharding(Mesh(local_devices, ('batch',)), P('batch'))``,
each device receiving its slice straight from the pipeline's buffer). That layout is
the one ``jax.pmap(..., in_axes=0)`` reads on a single host and, over the local mesh,
the host-local layout it turns into a global array without a copy on several hosts.

Compared with ``flax.jax_utils.prefetch_to_device`` (``np.stack`` of the per-device
slices, on the training thread) this removes one host copy of every image and takes
the transfer off the training thread.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_END = object()


def local_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh named ``'batch'`` over ``devices`` (default: this process's local
    devices, in ``jax.local_devices()`` order, which is pmap's order)."""
    return Mesh(np.array(list(devices or jax.local_devices())), ("batch",))


def batch_sharding(devices: Sequence[Any] | None = None) -> NamedSharding:
    """Leading axis split over the local devices (pmap's ``in_axes=0`` layout)."""
    return NamedSharding(local_mesh(devices), PartitionSpec("batch"))


def replicated_sharding(devices: Sequence[Any] | None = None) -> NamedSharding:
    """Every local device holds the whole value (pmap's ``in_axes=None`` layout)."""
    return NamedSharding(local_mesh(devices), PartitionSpec())


def to_device_layout(batch: dict, num_devices: int) -> tuple[dict, dict]:
    """Split a host batch into per-device views and host scalars.

    Args:
      batch: arrays with a leading ``num_devices * B`` axis, plus 0-d values (such
        as the pipeline's ``bad`` count).
      num_devices: local devices.

    Returns:
      ``(arrays, scalars)``: arrays reshaped to ``[num_devices, B, ...]`` (views, no
      copy, for C-contiguous input) and the 0-d values as Python numbers.

    Raises:
      ValueError: a leading size not divisible by ``num_devices``.
    """
    arrays, scalars = {}, {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.ndim == 0:
            scalars[k] = v.item()
            continue
        if v.shape[0] % num_devices:
            raise ValueError(f"Batch size ({v.shape[0]}) must be divisible by device count "
                             f"({num_devices})")
        arrays[k] = v.reshape((num_devices, -1) + v.shape[1:])
    return arrays, scalars


class DeviceFeed:
    """Iterator of ``(device_batch, host_scalars)`` built ``depth`` batches ahead.

    A daemon thread pulls host batches from ``batches``, reshapes them with
    :func:`to_device_layout` and starts their transfer with one sharded
    ``jax.device_put``; the training thread's ``next()`` only dequeues. Errors of the
    pipeline (for example ``BadRecordError``) are raised on the training thread, at
    the batch where they happened.

    Args:
      batches: host batches (dicts of numpy arrays, leading axis ``host_batch``).
      devices: local devices (default ``jax.local_devices()``).
      depth: batches transferred ahead of the step (2: one in use, one arriving).

    Attributes:
      wait_s: seconds the consumer spent blocked in ``next()`` (host wait).
      batches_out: batches handed to the consumer.
    """

    def __init__(self, batches: Iterator[dict], devices: Sequence[Any] | None = None,
                 depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth ({depth}) must be >= 1")
        self.devices = list(devices or jax.local_devices())
        self.sharding = batch_sharding(self.devices)
        self._source = iter(batches)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.wait_s = 0.0
        self.batches_out = 0
        self._done = False
        self._thread = threading.Thread(target=self._run, name="autotune-device-feed",
                                        daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        n = len(self.devices)
        try:
            for host in self._source:
                if self._stop.is_set():
                    return
                arrays, scalars = to_device_layout(host, n)
                on_device = jax.device_put(arrays, self.sharding)
                if not self._put((on_device, scalars)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)
            return
        self._put(_END)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[dict, dict]:
        if self._done:
            raise StopIteration
        t0 = time.perf_counter()
        item = self._queue.get()
        self.wait_s += time.perf_counter() - t0
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self.batches_out += 1
        return item

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (it may be blocked in the pipeline for up to one batch)."""
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout_s)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
