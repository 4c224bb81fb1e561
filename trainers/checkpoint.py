"""Checkpoints with orbax-checkpoint: train state (parameters, optimizer state, batch
statistics, step), the input iterator's state and the run's progress record.

Orbax writes each checkpoint into a temporary folder and renames it when complete
(and keeps the previous ones until the new one is committed), so a crash or a full
disk while saving leaves the last good checkpoint intact. Only the primary process
writes the metadata, as orbax requires on multi-host runs; the state saved is the
host copy of the replicated train state (one array per leaf, read from one device:
``jax.pmap(..., in_axes=(None, 0), out_axes=(None, 0))`` keeps no per-device stack).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; names the folder and the reason."""


class Checkpointer:
    """Save / restore ``(state, iterator_state, extra)`` under ``directory``.

    Args:
      directory: checkpoint folder (created).
      max_to_keep: newest checkpoints kept.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False))

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def save(self, step: int, replicated_state, iterator_state: dict, extra: dict) -> None:
        """Write checkpoint ``step``. ``replicated_state`` is the train state, host
        arrays or replicated ``jax.Array`` s (one copy is saved).

        Raises:
          CheckpointError: the write failed (disk full, permissions); names the folder
            and the bytes free there. The previous checkpoint stays intact.
        """
        if step in self.manager.all_steps():
            return  # already written (a timer checkpoint at the final step)
        state = jax.device_get(replicated_state)
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data_iter=ocp.args.JsonSave(iterator_state),
                extra=ocp.args.JsonSave(extra)), force=True)
            self.manager.wait_until_finished()
        except Exception as exc:  # noqa: BLE001 - see below
            # A full disk surfaces as OSError from orbax's Python writers and as
            # ValueError("RESOURCE_EXHAUSTED: ... No space left on device") from
            # tensorstore. Let the save's other threads finish, then delete the partial
            # "<step>.orbax-checkpoint-tmp" folder: it frees the space it took, and a
            # rerun saving the same step would race its removal otherwise.
            with contextlib.suppress(Exception):
                self.manager.wait_until_finished()
            if jax.process_index() == 0:
                shutil.rmtree(self.directory / f"{step}.orbax-checkpoint-tmp",
                              ignore_errors=True)
            need = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree_util.tree_leaves(state))
            free = shutil.disk_usage(self.directory).free
            text = " ".join(str(exc).split())
            reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else
                      "No space left on device" if "No space left on device" in text else
                      f"{type(exc).__name__}: {text[:400]}")
            raise CheckpointError(
                f"saving checkpoint {step} to {self.directory} failed: {reason} (the state "
                f"is {need:,} bytes; {free:,} bytes free there); the previous checkpoint "
                f"{self.latest_step()} is intact") from exc

    def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict, dict, int]:
        """Read checkpoint ``step`` (default: the newest) into the structure of
        ``abstract_state`` (an unreplicated state). Returns ``(state, iterator_state,
        extra, step)``.

        Raises:
          CheckpointError: no checkpoint, or it cannot be read.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        try:
            got = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data_iter=ocp.args.JsonRestore(),
                extra=ocp.args.JsonRestore()))
        except Exception as exc:  # noqa: BLE001 - orbax raises many kinds
            raise CheckpointError(f"cannot read checkpoint {step} in {self.directory}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        return got.state, dict(got.data_iter), dict(got.extra), step

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
