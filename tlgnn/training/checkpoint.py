"""The checkpoint file: what tlgnn writes into it, how it is read and checked, loading a module, exporting.

A tlgnn checkpoint is a ``torch.save`` zip archive holding a ``state_dict`` and a ``"tlgnn"`` section (the
self-description, :func:`describe`: format, version, tasks, outputs, model, graph settings, target statistics,
loss), so a model is rebuilt from the file alone. Two kinds are read alike:

- a Lightning checkpoint (``best.ckpt``/``last.ckpt`` of ``tlgnn fit``): the run's :class:`RunCheckpoint`
  callbacks write it, :class:`SelfDescription` (added to every trainer tlgnn builds) puts the section in;
- a compact one (:func:`export_checkpoint`): fp32 weights, the section and free-form ``"info"``, no optimiser.

Reading (:func:`read_checkpoint`, used by every loading path: ``tlgnn predict``/``test``, ``tlgnn.load_model``,
``model.init_from``, ``fit --resume`` and the scripts) never runs code from the file: it unpickles with
``weights_only=True`` and allows only :data:`SAFE_GLOBALS` besides torch's own tensor types; a file asking for
anything else is refused with one line naming the file and the globals it wanted. Every checkpoint tlgnn writes
gets a ``<file>.xxh3`` sidecar (:mod:`tlgnn.utils.files`); reading checks it (mismatch: refused; missing: loaded,
with a one-time note that the file is unverified, after checking the archive's own CRC-32s: :func:`checkpoint_damage`).
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.torch_version import TorchVersion

from tlgnn.errors import TlgnnError
from tlgnn.training.module import TransferModule
from tlgnn.utils.config import ConfigError
from tlgnn.utils.files import checksum_path, temp_path, verify_checksum, write_checksum

#: Key of the self-description section.
CHECKPOINT_KEY = "tlgnn"
#: Version of the self-description's layout (``checkpoint["tlgnn"]["format"]``).
CHECKPOINT_FORMAT = 1
#: Python types a checkpoint may hold besides what ``torch.load(weights_only=True)`` allows by itself (tensors,
#: containers, numbers, strings): ``TorchVersion`` (a ``str``) appears in the ``"info"`` of exported checkpoints.
SAFE_GLOBALS: list[Any] = [TorchVersion]

_unverified_noted: set[str] = set()


class CheckpointError(TlgnnError, ValueError):
    """A checkpoint file cannot be used: names the file and why (one line)."""

    def __init__(self, path: str | Path, reason: str, damaged: bool = False) -> None:
        self.path, self.reason, self.damaged = str(path), reason, damaged
        super().__init__(f"{path} is damaged ({reason})" if damaged else f"{path}: {reason}")


# ------------------------------------------------------------------------------------------------- writing
def describe(module: TransferModule) -> dict[str, Any]:
    """The ``"tlgnn"`` section of ``module``'s checkpoints: the format plus the module's self-description."""
    return {"format": CHECKPOINT_FORMAT, **module.describe()}


class SelfDescription(L.Callback):
    """Writes the ``"tlgnn"`` section into every checkpoint the trainer saves."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = describe(pl_module)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes a checksum sidecar beside each checkpoint and follows a run directory moved
    or copied between attempts.

    The sidecar of a file is removed before the file is rewritten and written after it, so a process killed in
    between leaves an unverified file, never a false "damaged" one. Moved runs (an rsync'd run, a SLURM requeue on
    another mount path): Lightning drops the best score when the checkpoint folder's path changed, so a resumed
    copy wrote a fresh ``best-v1.ckpt`` and tested that; here the paths recorded under the old folder are mapped
    into the current one when the best checkpoint is there, and the bookkeeping carries over."""

    @property
    def state_key(self) -> str:
        """``ModelCheckpoint``'s key, so checkpoints written before this subclass existed resume alike."""
        return "ModelCheckpoint" + super().state_key[len(type(self).__qualname__):]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:
            moved = _moved_paths(state_dict, str(old), str(new))
            if moved.get("best_model_path") and Path(moved["best_model_path"]).is_file():
                state_dict = moved
        super().load_state_dict(state_dict)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if trainer.is_global_zero:
            checksum_path(filepath).unlink(missing_ok=True)
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero and Path(filepath).is_file():
            write_checksum(filepath)

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            checksum_path(filepath).unlink(missing_ok=True)


def _moved_paths(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """``ModelCheckpoint`` state with every path under ``old`` re-rooted under ``new``."""
    prefix = os.path.join(old, "")

    def move(path: Any) -> Any:
        if isinstance(path, str) and path.startswith(prefix):
            return os.path.join(new, path[len(prefix):])
        return path

    moved = dict(state, dirpath=new)
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in moved:
            moved[key] = move(moved[key])
    if isinstance(moved.get("best_k_models"), dict):
        moved["best_k_models"] = {move(k): v for k, v in moved["best_k_models"].items()}
    return moved


def export_checkpoint(module: TransferModule, path: str | Path, info: Mapping[str, Any] | None = None) -> Path:
    """Write ``module`` as a compact checkpoint to ``path`` (atomically, with its ``.xxh3`` sidecar); floating
    weights are stored as fp32, no optimiser state. Returns the path. ``info`` (JSON-able) is stored under
    ``"info"``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone()
             for k, v in module.state_dict().items()}
    payload = {
        "state_dict": state,
        CHECKPOINT_KEY: describe(module),
        "hyper_parameters": dict(module.hparams),
        "info": dict(info or {}),
    }
    tmp = temp_path(path)
    try:
        torch.save(payload, tmp)
        checksum_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    write_checksum(path)
    return path


# ------------------------------------------------------------------------------------------------- checking
def checkpoint_damage(path: str | Path) -> str | None:
    """Why a checkpoint file is unusable (not a zip archive, truncated, or a stored CRC-32 no longer matches its
    bytes), or ``None``. torch checkpoints are zip archives; ``torch.load`` itself does not check the CRCs, so a
    flipped bit would otherwise load silently as wrong weights."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != b"PK\x03\x04":
                return None  # not a zip archive at all: not damaged, not a checkpoint (said when it is read)
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"not a complete checkpoint: {err}"
    return f"CRC mismatch in {bad}" if bad else None


def check_file(path: str | Path) -> bool:
    """Raise :class:`CheckpointError` if the file at ``path`` differs from its ``.xxh3`` sidecar or, without a
    sidecar, its archive is damaged (the sidecar covers every byte, so the archive's CRC-32s are read only when
    there is none). Returns whether a sidecar verified it (``False``: none beside it, a checkpoint written before
    tlgnn wrote them or received without one; it is accepted, and :func:`read_checkpoint` says so once per file)."""
    path = Path(path)
    try:
        if verify_checksum(path):
            return True
    except ValueError as err:
        raise CheckpointError(path, str(getattr(err, "reason", err)), damaged=True) from err
    damage = checkpoint_damage(path)
    if damage:
        raise CheckpointError(path, damage, damaged=True)
    return False


def _note_unverified(path: Path) -> None:
    """One line on stderr, once per file and process, that ``path`` was loaded without a checksum."""
    key = str(path.resolve())
    if key not in _unverified_noted:
        _unverified_noted.add(key)
        print(f"tlgnn: {path}: no checksum file ({checksum_path(path).name}) beside it; loaded it unverified",
              file=sys.stderr)


def _unsafe_globals(path: Path) -> list[str]:
    """The Python globals the file's pickle asks for that safe loading does not allow (read without loading;
    ``[]`` for a file that is not a zip archive: ``torch.load(weights_only=True)`` still guards it)."""
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except ValueError:  # not a torch zip archive (legacy format or not a checkpoint at all)
            return []


def _refusal(path: Path, wanted: list[str]) -> CheckpointError:
    return CheckpointError(path, f"refused: it asks to import {', '.join(wanted)}, which a tlgnn checkpoint never "
                                 "holds (unpickling it could run code); it was not loaded")


# ------------------------------------------------------------------------------------------------- reading
def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint file safely and check that it is a tlgnn checkpoint.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: damaged (checksum sidecar, archive CRCs), asks for code to run, unreadable, or not a
            tlgnn checkpoint; the one-line message names the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    verified = check_file(path)
    try:
        wanted = _unsafe_globals(path)
    except Exception as err:  # noqa: BLE001 - an archive torch cannot read
        raise CheckpointError(path, f"not a readable checkpoint ({_first_line(err)})") from err
    if wanted:
        raise _refusal(path, wanted)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file; weights_only refuses code
        raise _load_failure(path, err) from err
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(path, f"not a tlgnn checkpoint (no '{CHECKPOINT_KEY}' section)")
    if not verified:
        _note_unverified(path)  # only for a file that is a tlgnn checkpoint: an error stays one line
    upgrade_model_config(checkpoint[CHECKPOINT_KEY])
    return checkpoint


def upgrade_model_config(meta: dict[str, Any]) -> None:
    """Complete, in place, the model config of a checkpoint's self-description (``meta["model"]``) for this
    tlgnn: options added after the checkpoint was written get the values that rebuild the model it was trained
    as (the registries' ``upgraded``, e.g. a difference head with ``use_known_low`` and no
    ``condition_on_known_low`` gets ``False``). The one place where checkpoints' model configs are upgraded: every
    loading path reads through :func:`read_checkpoint`. Old option names are renamed later, when it is built."""
    from tlgnn.models import ENCODERS, HEADS

    model = meta.get("model")
    if not isinstance(model, dict):
        return
    for part, registry in (("encoder", ENCODERS), ("head", HEADS)):
        spec = model.get(part)
        if isinstance(spec, dict) and "name" in spec:
            options = {k: v for k, v in spec.items() if k != "name"}
            model[part] = {"name": spec["name"], **registry.upgraded(spec["name"], options)}


def _load_failure(path: Path, err: Exception) -> CheckpointError:
    """The one-line error for a failed safe load: the globals it asked for, else the unpickler's own reason
    (torch wraps it in advice to load unsafely, which is not repeated)."""
    found = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(err))))
    if found:
        return _refusal(path, found)
    inner = err.__context__ if isinstance(err.__context__, Exception) else err
    return CheckpointError(path, f"not a readable checkpoint ({_first_line(inner)})")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def load_module(path: str | Path, map_location: Any = "cpu") -> TransferModule:
    """Rebuild a :class:`TransferModule` (in eval mode) from a checkpoint file alone."""
    checkpoint = read_checkpoint(path, map_location)
    meta = checkpoint[CHECKPOINT_KEY]
    hparams = checkpoint.get("hyper_parameters", {})
    module = TransferModule(
        model=meta["model"],
        tasks=meta["tasks"],
        optim=hparams.get("optim"),
        loss=meta.get("loss"),
        graph=meta.get("graph"),
        target_stats=meta.get("target_stats"),
    )
    module.load_state_dict(checkpoint["state_dict"])
    module._loss_std = None
    module.eval()
    return module


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The ``"info"`` section of a checkpoint (``{}`` for a Lightning checkpoint)."""
    return dict(read_checkpoint(path).get("info") or {})


@dataclass
class Pretrained:
    """A checkpoint read for initialisation (``model.init_from``): its file, self-description and weights split
    by part."""

    path: Path
    meta: dict[str, Any]
    encoder_state: dict[str, torch.Tensor]
    head_state: dict[str, torch.Tensor]

    @property
    def encoder_spec(self) -> dict[str, Any]:
        return dict(self.meta["model"]["encoder"])

    @property
    def head_spec(self) -> dict[str, Any]:
        return dict(self.meta["model"]["head"])

    @property
    def graph(self) -> dict[str, Any]:
        return dict(self.meta.get("graph") or {})


def read_pretrained(path: str | Path) -> Pretrained:
    """Read a tlgnn checkpoint (Lightning or compact) for initialisation; errors are
    ``ConfigError("model.init_from")`` naming the file."""
    path = Path(path).expanduser()
    try:
        checkpoint = read_checkpoint(path)
    except (FileNotFoundError, CheckpointError) as err:
        raise ConfigError("model.init_from", str(err)) from err
    meta = checkpoint[CHECKPOINT_KEY]
    state = checkpoint["state_dict"]
    encoder = {k[len("model.encoder."):]: v for k, v in state.items() if k.startswith("model.encoder.")}
    head = {k[len("model.head."):]: v for k, v in state.items() if k.startswith("model.head.")}
    if not encoder:
        raise ConfigError("model.init_from", f"{path}: the checkpoint holds no encoder weights")
    return Pretrained(path=path, meta=meta, encoder_state=encoder, head_state=head)


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_KEY",
    "SAFE_GLOBALS",
    "CheckpointError",
    "Pretrained",
    "RunCheckpoint",
    "SelfDescription",
    "check_file",
    "checkpoint_damage",
    "checkpoint_info",
    "describe",
    "export_checkpoint",
    "load_module",
    "read_checkpoint",
    "read_pretrained",
    "upgrade_model_config",
]
