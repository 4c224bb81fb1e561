"""A compact listing of input members: N ``(key, label)`` pairs held in a few numpy
arrays instead of N Python tuples and strings.

A Python ``(path, label)`` tuple costs about 230 bytes per image (the path string
~150 B, the tuple 56 B, the list slot, the int); at ImageNet-21k's 14 million images
that is over 3 GB in the packing process. :class:`Listing` stores:

* per **group** (a run of consecutive members in one folder, as a scan lists them:
  one per class folder and sub-folder): a ``head`` (the folder, ``/`` included, plus
  the prefix every name of the run shares, e.g. ``.../n01440764/n01440764_``) and a
  ``tail`` (the suffix they share, e.g. ``.JPEG``), as Python strings (a few
  thousand);
* per **member**: the rest of its name in one UTF-8 byte blob (``bytearray``) with
  end offsets (``uint32``, ``uint64`` past 4 GiB), its group (``uint16``/``uint32``)
  and its label (``int16``/``int32``).

An ImageNet name ``n01440764_10026.JPEG`` keeps 5 bytes in the blob: about 13 bytes
per member in all (1 M members: ~13 MB; 14 M: ~180 MB). Keys are rebuilt exactly
(``head + name + tail``; names that are not valid UTF-8 round-trip through
``surrogateescape``, as ``os.scandir`` gives them).

A listing behaves as a read-only sequence of ``(key: str, label: int)``: ``len``,
``[i]``, iteration, ``==`` with any sequence of pairs. :meth:`Listing.take` and
slicing return a *view* (the same arrays and an index array, no copy of the names),
which pickles as a compact listing of its own members only (chunks sent to worker
processes carry their members, not the whole input).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Iterable, Iterator

import numpy as np

#: Members of one folder buffered before they are stored as a group (bounds the
#: Python objects a long flat folder costs while listed).
RUN_LIMIT = 65536
_BLOCK = 4096  # members decoded per numpy gather while iterating


def _encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _common_suffix(names: Sequence[str], start: int) -> str:
    """The longest common suffix of ``[n[start:] for n in names]`` (``names``: not
    empty), with one ``endswith`` a name instead of a reversed copy of each."""
    s = names[0][start:]
    for n in names:
        if len(n) - start < len(s):  # never into a name's first ``start`` characters
            s = s[len(s) - (len(n) - start):] if len(n) > start else ""
        if not n.endswith(s):
            k = len(s) - 1
            while k and not n.endswith(s[len(s) - k:]):
                k -= 1
            s = s[len(s) - k:] if k else ""
        if not s:
            break
    return s


def _smallest(values: np.ndarray, signed: bool) -> np.ndarray:
    """``values`` as the smallest of 16/32/64-bit integers that holds them."""
    kinds = (np.int16, np.int32, np.int64) if signed else (np.uint16, np.uint32, np.uint64)
    if values.size == 0:
        return values.astype(kinds[0])
    lo, hi = int(values.min()), int(values.max())
    for k in kinds:
        info = np.iinfo(k)
        if info.min <= lo and hi <= info.max:
            return values.astype(k, copy=False) if values.dtype == k else values.astype(k)
    raise OverflowError(f"values {lo}..{hi} fit no 64-bit integer")


class ListingBuilder:
    """Fills a :class:`Listing` member by member, in order, keeping only the current
    folder's run as Python objects (at most :data:`RUN_LIMIT`).

    ``add(key, label)`` appends one member; ``extend(pairs)`` many; ``build()``
    returns the listing (the builder is spent)."""

    def __init__(self):
        self._heads: list[str] = []
        self._tails: list[str] = []
        self._blob = bytearray()
        self._lens: list[np.ndarray] = []  # per run: each member's name bytes
        self._labels: list[np.ndarray] = []  # per run: each member's label
        self._sizes: list[int] = []  # per run (= group): members
        self._dir: str | None = None
        self._run: list[str] = []
        self._run_labels: list[int] = []

    def add(self, key: str, label: int) -> None:
        """Append member ``(key, label)``; ``label`` is any int (-1: none)."""
        cut = key.rfind("/") + 1
        folder = key[:cut]
        if folder != self._dir or len(self._run) >= RUN_LIMIT:
            self._flush()
            self._dir = folder
        self._run.append(key[cut:])
        self._run_labels.append(int(label))

    def add_names(self, folder: str, names: Sequence[str], label: int) -> None:
        """``add(folder + name, label)`` for each of ``names`` (``folder`` ending in
        ``/``, names without ``/``: a scanned folder's entries), in bulk: the same
        listing, without a Python call per member."""
        label, i = int(label), 0
        while i < len(names):
            if folder != self._dir or len(self._run) >= RUN_LIMIT:
                self._flush()
                self._dir = folder
            part = names[i:i + RUN_LIMIT - len(self._run)]
            self._run.extend(part)
            self._run_labels.extend([label] * len(part))
            i += len(part)

    def extend(self, pairs: Iterable[tuple[str, int]]) -> "ListingBuilder":
        """Append every ``(key, label)`` of ``pairs``; returns the builder."""
        for key, label in pairs:
            self.add(key, label)
        return self

    def _flush(self) -> None:
        """Store the current run as one group: the shared prefix and suffix of its
        names once, the rest of each name in the blob."""
        names = self._run
        if not names:
            return
        prefix = os.path.commonprefix(names)
        start = len(prefix)
        suffix = _common_suffix(names, start)
        self._heads.append(self._dir + prefix)
        self._tails.append(suffix)
        if start or suffix:
            stop = -len(suffix) or None
            names = [n[start:stop] for n in names]
        joined = "".join(names)
        blob = _encode(joined)
        if len(blob) == len(joined):  # one byte a character: a name's bytes are its length
            lens = np.fromiter(map(len, names), dtype=np.int64, count=len(names))
        else:
            encoded = [_encode(r) for r in names]
            lens = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
            blob = b"".join(encoded)
        self._blob += blob
        self._lens.append(_smallest(lens, signed=False))
        self._labels.append(_smallest(np.array(self._run_labels, dtype=np.int64), signed=True))
        self._sizes.append(len(names))
        self._run, self._run_labels = [], []

    def build(self) -> "Listing":
        """The listing of every member added, in order."""
        self._flush()
        n_groups = len(self._sizes)
        ends = np.zeros(0, np.uint32)
        if self._lens:
            lens = np.concatenate(self._lens)
            self._lens = []
            ends = np.cumsum(lens, dtype=np.uint32 if len(self._blob) < 2 ** 32 else np.uint64)
            del lens
        labels = (_smallest(np.concatenate(self._labels), signed=True) if self._labels
                  else np.zeros(0, np.int16))
        self._labels = []
        groups = np.repeat(np.arange(n_groups, dtype=np.uint16 if n_groups <= 2 ** 16
                                     else np.uint32), self._sizes)
        return Listing(self._heads, self._tails, self._blob, ends, groups, labels)


class Listing(Sequence):
    """N members ``(key, label)`` in numpy arrays (see the module docstring).

    Build one with :class:`ListingBuilder` or :meth:`from_pairs`. ``take(indices)``
    and ``[a:b]`` give views; ``labels`` is the int array of every member's label
    (a copy for a view); ``name(i)`` is member ``i``'s file name.
    """

    __slots__ = ("_heads", "_tails", "_blob", "_ends", "_groups", "_labels", "_index")

    def __init__(self, heads: list[str], tails: list[str], blob: bytearray,
                 ends: np.ndarray, groups: np.ndarray, labels: np.ndarray,
                 index: np.ndarray | None = None):
        self._heads, self._tails, self._blob = heads, tails, blob
        self._ends, self._groups, self._labels = ends, groups, labels
        self._index = index

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, int]]) -> "Listing":
        """A listing of ``pairs`` ``(key, label)`` in their order."""
        return ListingBuilder().extend(pairs).build()

    # -------------------------------------------------------------- sequence

    def __len__(self) -> int:
        return len(self._labels) if self._index is None else len(self._index)

    def _base(self, i: int) -> int:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"listing index {i} out of range 0..{n - 1}")
        return i if self._index is None else int(self._index[i])

    def _key(self, j: int) -> str:
        start = int(self._ends[j - 1]) if j else 0
        g = int(self._groups[j])
        name = self._blob[start:int(self._ends[j])].decode("utf-8", "surrogateescape")
        return self._heads[g] + name + self._tails[g]

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step == 1 and self._index is not None:  # a view of the index: no copy
                return self._view(self._index[start:max(start, stop)])
            return self.take(np.arange(start, stop, step, dtype=np.int64))
        j = self._base(int(i))
        return self._key(j), int(self._labels[j])

    def __iter__(self) -> Iterator[tuple[str, int]]:
        blob, heads, tails = self._blob, self._heads, self._tails
        n = len(self)
        for lo in range(0, n, _BLOCK):
            j = (np.arange(lo, min(n, lo + _BLOCK)) if self._index is None
                 else self._index[lo:lo + _BLOCK].astype(np.int64))
            ends = self._ends[j].tolist()
            starts = np.where(j > 0, self._ends[np.maximum(j - 1, 0)], 0).tolist()
            groups = self._groups[j].tolist()
            labels = self._labels[j].tolist()
            for s, e, g, lab in zip(starts, ends, groups, labels):
                yield heads[g] + blob[s:e].decode("utf-8", "surrogateescape") + tails[g], lab

    def __eq__(self, other) -> bool:
        if not isinstance(other, (Listing, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and all(
            (k, lab) == (ok, olab) for (k, lab), (ok, olab) in zip(self, other))

    __hash__ = None

    def __repr__(self) -> str:
        return f"Listing({len(self)} members, {self.nbytes:,} bytes)"

    # -------------------------------------------------------------- views

    def positions(self) -> np.ndarray:
        """``int64 [len]``: each member's position in the listing this is a view of
        (``0 .. len - 1`` for a listing that is no view): what aligns a view with
        arrays kept beside its base listing."""
        return (np.arange(len(self), dtype=np.int64) if self._index is None
                else self._index.astype(np.int64))

    def take(self, indices) -> "Listing":
        """A view of members ``indices`` (ints, any order, repeats allowed; numpy
        array or sequence), in that order; no name is copied.

        Raises:
          IndexError: an index outside ``-len .. len-1``.
        """
        idx = np.asarray(indices).reshape(-1)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"listing indices must be integers, not {idx.dtype}")
        n = len(self)
        if idx.size:
            lo, hi = int(idx.min()), int(idx.max())
            if lo < -n or hi >= n:
                raise IndexError(f"listing indices {lo}..{hi} out of range for {n} members")
            if lo < 0:
                idx = np.where(idx < 0, idx.astype(np.int64) + n, idx)
        base = idx if self._index is None else self._index[idx]
        if base.dtype.kind != "u" or base.size == 0:
            base = _smallest(base.astype(np.int64), signed=False) if base.size else \
                base.astype(np.uint32)
        return self._view(base)

    def _view(self, index: np.ndarray) -> "Listing":
        return Listing(self._heads, self._tails, self._blob, self._ends, self._groups,
                       self._labels, index)

    @property
    def labels(self) -> np.ndarray:
        """Every member's label (int16 or int32; a view's is a new array)."""
        return self._labels if self._index is None else self._labels[self._index]

    def name(self, i: int) -> str:
        """Member ``i``'s file name (the key after its last ``/``)."""
        key = self._key(self._base(i))
        return key[key.rfind("/") + 1:]

    @property
    def nbytes(self) -> int:
        """Bytes held in arrays and the blob (a view counts only its index)."""
        if self._index is not None:
            return self._index.nbytes
        return (len(self._blob) + self._ends.nbytes + self._groups.nbytes + self._labels.nbytes
                + sum(len(h) + len(t) for h, t in zip(self._heads, self._tails)))

    def compact(self) -> "Listing":
        """This listing with its own arrays (a view's members copied out; only the
        groups it uses kept); a listing that is not a view is returned as is."""
        if self._index is None:
            return self
        j = self._index.astype(np.int64)
        used, groups = np.unique(self._groups[j], return_inverse=True)
        starts = np.where(j > 0, self._ends[np.maximum(j - 1, 0)], 0).astype(np.int64)
        stops = self._ends[j].astype(np.int64)
        blob = bytearray()
        src = memoryview(self._blob)
        for s, e in zip(starts.tolist(), stops.tolist()):
            blob += src[s:e]
        ends = _smallest(np.cumsum(stops - starts, dtype=np.int64).astype(np.uint64),
                         signed=False) if j.size else np.zeros(0, np.uint32)
        ul = used.tolist()
        return Listing([self._heads[g] for g in ul], [self._tails[g] for g in ul], blob,
                       ends, _smallest(groups.reshape(-1).astype(np.uint64), signed=False),
                       self._labels[j])

    def __reduce__(self):
        c = self.compact()
        return (Listing, (c._heads, c._tails, c._blob, c._ends, c._groups, c._labels))
