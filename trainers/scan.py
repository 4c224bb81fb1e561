"""The one folder scanner: what an image file is, and how an image folder is listed.

Layouts: ``<root>/<class>/**/<file>`` (ImageNet, one folder per class, images
directly in it or at any depth below it, e.g. ``<wnid>/images/*.JPEG`` with a boxes
file beside the folder; class index = position of the folder name in sorted order,
the order tensorflow-datasets ``imagenet2012`` uses) or a flat folder of images.
Below a class folder, files are listed depth first, sorted by name at each level
(for a class folder without sub-folders: sorted by name).

**An image file** is a directory entry whose name is not hidden or a system file
(names starting with ``.``: ``.DS_Store``, macOS ``._*`` AppleDouble files; and
``Thumbs.db``, ``desktop.ini``) and ends in one of :data:`IMAGE_SUFFIXES` (any case).
Whether its bytes decode is for the decoder to say. The pack, the decode probe, the
validation reader, the data-set statistics and the synthetic data set's check all use
this one rule (:func:`not_an_image`).

Folders whose name starts with ``.`` are never class folders.
"""

from __future__ import annotations

import itertools
import operator
import os
import random
from pathlib import Path
from typing import Sequence

from trainers.listing import Listing, ListingBuilder

try:  # built from trainers/_jpegcrop.c (list_folder: a folder's sorted entries in C)
    from trainers import _jpegcrop
except ImportError:  # pragma: no cover - depends on the build
    _jpegcrop = None

#: File-name endings of image files (compared lower-case): JPEG, and the formats the
#: pack converts to JPEG once (Pillow reads them).
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp",
                  ".tif", ".tiff")
#: Names that are never images (besides every name starting with ``.``).
SYSTEM_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


class DataFolderError(ValueError):
    """An image folder that cannot be listed (missing, no class folders, an empty
    class folder...); the message names the folder."""


def not_an_image(name: str) -> str | None:
    """Why a directory entry called ``name`` is not an image file, or None when it is
    one by its name (see the module docstring).

    Returns:
      ``"not an image (system file)"`` for hidden and system files,
      ``"not an image (name ends in '.txt', not an image suffix)"`` and the like for
      other endings, else None.
    """
    if name in SYSTEM_FILES or name.startswith("."):
        return "not an image (system file)"
    suffix = os.path.splitext(name)[1].lower()
    if suffix not in IMAGE_SUFFIXES:
        return (f"not an image (name ends in {suffix!r}, not one of "
                f"{', '.join(IMAGE_SUFFIXES)})" if suffix else
                "not an image (no file-name suffix)")
    return None


def is_image_name(name: str) -> bool:
    """True when ``name`` names an image file (:func:`not_an_image` gives no reason)."""
    return not_an_image(name) is None


def _entries(folder: str | os.PathLike) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=_NAME)


_NAME = operator.attrgetter("name")


#: Deepest folder level listed below a class folder (a guard against link loops).
MAX_DEPTH = 32


def files_below(folder: str | os.PathLike, depth: int = 0) -> list[os.DirEntry]:
    """Every entry below ``folder`` that is not a folder (files, links, FIFOs...),
    depth first, sorted by name at each level; folders starting with ``.`` and
    levels deeper than :data:`MAX_DEPTH` are left out. A sub-folder with nothing in
    it is listed itself, so that a caller accounting for every entry (the pack) can
    say why it packs nothing from it.

    Raises:
      OSError: ``folder`` cannot be listed.
    """
    out: list[os.DirEntry] = []
    for e in _entries(folder):
        if e.is_dir():
            if not e.name.startswith(".") and depth < MAX_DEPTH:
                out.extend(files_below(e.path, depth + 1) or [e])
        else:
            out.append(e)
    return out


def runs_of(entries: list[os.DirEntry]) -> list[tuple[str, list[str]]]:
    """``entries`` (as :func:`files_below` lists them) as runs of names:
    ``(parent + "/", names)`` for each run of consecutive entries in one folder."""
    return [(parent, [e.name for e in run]) for parent, run in
            itertools.groupby(entries, lambda e: e.path[:len(e.path) - len(e.name)])]


def runs_below(folder: str, depth: int = 0) -> list[tuple[str, list[str]]]:
    """:func:`files_below` as runs of names: ``(parent + "/", names)`` for each run of
    consecutive entries in one folder, the same entries in the same order (so
    ``[parent + name for each run, each name]`` is ``[e.path for e in
    files_below(folder)]``, tested). A class folder without sub-folders is one run.
    Read with ``_jpegcrop.list_folder`` when the extension is built (the entries'
    names and kinds in C: no ``os.DirEntry`` per file); a folder with a name that is
    not valid UTF-8 is listed by :func:`files_below`.

    Raises:
      OSError: ``folder`` (or a sub-folder) cannot be listed.
    """
    listed = None if _jpegcrop is None else _jpegcrop.list_folder(folder)
    if listed is None:
        return runs_of(files_below(folder, depth))
    names, dirs = listed
    head = folder + "/"
    if not any(dirs):
        return [(head, names)] if names else []
    out: list[tuple[str, list[str]]] = []
    run: list[str] = []
    for name, is_dir in zip(names, dirs):
        if not is_dir:
            run.append(name)
        elif not name.startswith(".") and depth < MAX_DEPTH:
            below = runs_below(head + name, depth + 1)
            if not below:  # an empty sub-folder is listed itself
                run.append(name)
                continue
            if run:
                out.append((head, run))
                run = []
            out.extend(below)
    if run:
        out.append((head, run))
    return out


def list_class_folders(root: str | os.PathLike) -> list[str]:
    """Sorted names of the class folders of ``root`` (sub-folders not starting with
    ``.``); empty when there are none.

    Raises:
      OSError: ``root`` cannot be listed.
    """
    return [e.name for e in _entries(root) if e.is_dir() and not e.name.startswith(".")]


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder`` (regular files, links followed, with an
    image name), sorted by name.

    Raises:
      OSError: ``folder`` cannot be listed.
    """
    return [Path(e.path) for e in _entries(folder) if is_image_name(e.name) and e.is_file()]


def scan_class_folders(root: str | os.PathLike, class_names: Sequence[str] | None = None, *,
                       images_only: bool = False, error: type[Exception] = DataFolderError,
                       ) -> tuple[tuple[str, ...], Listing]:
    """List ``<root>/<class>/**/<entry>`` as ``(class_names, listing)``, the listing a
    :class:`trainers.listing.Listing` of ``(path, label)`` (entries at any depth below
    the class folder, :func:`files_below`), filled class folder by class folder (the
    entries of one class folder are Python objects at a time, never the whole list).

    Args:
      root: the folder of class folders. Files directly under it are ignored.
      class_names: the classes labels index (the train classes, for a validation
        folder); every class folder must be one of them. Default: the class folders
        of ``root``, sorted.
      images_only: list only image files (:func:`image_files`). Default: every entry,
        images or not (system files, dangling links, FIFOs, sub-folders), so that a
        caller that must account for every file (the pack) can say why it skips one.
      error: the exception type raised (the caller's own, e.g. ``PackError``).

    Returns:
      The class names and the entries, by class then depth first by name.

    Raises:
      error: ``root`` is missing, is not a folder, has no class folders, a class
        folder is empty, or (with ``class_names``) a class folder is not among them.
    """
    root = Path(root)
    if not root.exists():
        raise error(f"data folder {root} does not exist")
    if not root.is_dir():
        raise error(f"data path {root} is not a folder (expected <root>/<wnid>/*.JPEG)")
    found = list_class_folders(root)
    if not found:
        raise error(f"data folder {root} has no class folders (expected <root>/<wnid>/*.JPEG)")
    names = tuple(found) if class_names is None else tuple(class_names)
    index = {c: i for i, c in enumerate(names)}
    items = ListingBuilder()
    for name in found:
        if name not in index:
            raise error(f"class folder {root / name} is not a train class")
        if images_only:
            entries = files_below(root / name)
            empty = not entries
            runs = runs_of([e for e in entries if is_image_name(e.name) and e.is_file()])
        else:
            runs = runs_below(str(root / name))
            empty = not runs
        if empty:
            raise error(f"class folder {root / name} is empty (no file at any depth)")
        for folder, run in runs:  # one bulk add per run of one folder
            items.add_names(folder, run, index[name])
    return names, items.build()


def sample_images(root: str | os.PathLike, n: int, seed: int = 0) -> list[Path]:
    """Up to ``n`` image files of ``root`` (class folders, and images directly in
    ``root``), spread evenly over the class folders, in a seeded random order.

    Raises:
      DataFolderError: ``root`` does not exist or holds no image file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFolderError(f"data folder {root} does not exist")
    groups = [[Path(e.path) for e in files_below(root / c) if is_image_name(e.name) and e.is_file()]
              for c in list_class_folders(root)] + [image_files(root)]
    groups = [g for g in groups if g]
    if not groups:
        raise DataFolderError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    rng = random.Random(seed)
    for g in groups:
        rng.shuffle(g)
    out: list[Path] = []
    i = 0
    while len(out) < n and any(i < len(g) for g in groups):
        out.extend(g[i] for g in groups if i < len(g))
        i += 1
    out = out[:n]
    rng.shuffle(out)
    return out
