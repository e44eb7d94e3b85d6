"""Model registry: immutable, checksummed versions in a directory (torch-free).

Layout under ``root``::

    <version>/model.onnx          sequence encoder (float32)
    <version>/model_fp16.onnx     same graph in float16 for GPU workers (optional)
    <version>/item_model.onnx     item tower: any item id -> vector
    <version>/items.npz           item index: ids + vectors of the training catalogue
    <version>/weights.npz         PyTorch weights for warm starts (``--from``)
    <version>/training.png        loss and validation curves of the run
    <version>/manifest.json       everything else (see ``publish``)
    PROMOTED                      {"version": ..., "history": [...]} replaced atomically
    PROMOTED.<platform>           the same, for the versions fine-tuned on one platform
    promotions.log                append-only audit trail of promote/rollback
    .staging-*                    half-written versions; never listed, never loaded

Why this shape: a version directory appears in one ``os.rename`` of a fully
written and verified staging directory inside the same root (same file
system, so the rename is atomic), and ``PROMOTED`` is replaced with
``os.replace``: a reader sees the old state or the new one, never a mix.
Workers call :meth:`Registry.verify` before swapping a model in, so a
corrupted copy (sha mismatch), a wrong shape or a non-finite output is
refused with a :class:`ModelRejected` naming the reason.

Platform versions (``interest train --platform P --from V``) carry
``platform`` and ``parent`` in their manifest and have a pointer of their own,
``PROMOTED.<platform>``: promoting, rolling back and the quality gate work per
platform exactly as for the shared model, and a platform version can never
become the shared promoted one (``promote`` reads the platform from the
manifest), so the two embedding spaces and item indexes are never confused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.manifest import MANIFEST, ModelRejected, sha256_file

PROMOTED = "PROMOTED"
STAGING_PREFIX = ".staging-"
GATE_METRIC = "ndcg@10"
_PLATFORM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def check_platform(platform: str | None) -> str | None:
    """``platform`` itself when it is a valid name (it becomes part of a file name), else ModelRejected."""
    if platform is not None and not _PLATFORM_NAME.fullmatch(platform):
        raise ModelRejected(f"invalid platform name {platform!r} (lower-case letters, digits, _ and -)")
    return platform


def manifest_platform(manifest: Mapping[str, Any]) -> str | None:
    """The platform a version was fine-tuned for (None: the shared, cross-platform model)."""
    value = manifest.get("platform")
    return None if value in (None, "") else str(value)


def _write_atomic(path: Path, text: str) -> None:
    """Write next to the target, fsync, then ``os.replace``: all or nothing."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _valid_metric(manifest: Mapping[str, Any]) -> float | None:
    value = manifest.get("metrics", {}).get("valid", {}).get(GATE_METRIC)
    return None if value is None else float(value)


class Registry:
    """A directory of model versions plus the promoted pointer."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- reading ----------------------------------------------------------
    def versions(self) -> list[str]:
        """Complete versions (those with a manifest), oldest first.

        Names start with their second; two versions published within one
        second (a fine-tune right after its parent) are ordered by the
        manifest's ``created``, which carries microseconds.
        """
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir()
                 if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()]
        return sorted(names, key=lambda name: (name[:17], self._created(name), name))

    def _created(self, version: str) -> str:
        try:
            return str(json.loads((self.root / version / MANIFEST).read_text(encoding="utf-8")).get("created", ""))
        except (OSError, ValueError):
            return ""

    def platform_of(self, version: str) -> str | None:
        """The platform of a version's manifest (None: shared; also for an unreadable manifest)."""
        try:
            return manifest_platform(self.manifest(version))
        except (ModelRejected, ValueError):
            return None

    def platforms(self) -> list[str]:
        """Platforms that have a promoted pointer, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name[len(PROMOTED) + 1:] for p in self.root.glob(PROMOTED + ".*") if p.is_file()
                      and _PLATFORM_NAME.fullmatch(p.name[len(PROMOTED) + 1:]))

    def _pointer_path(self, platform: str | None) -> Path:
        check_platform(platform)
        return self.root / (PROMOTED if platform is None else f"{PROMOTED}.{platform}")

    def _pointer(self, platform: str | None = None) -> dict[str, Any]:
        path = self._pointer_path(platform)
        if not path.is_file():
            return {"version": None, "history": []}
        data = json.loads(path.read_text(encoding="utf-8"))
        return {"version": data.get("version"), "history": list(data.get("history", []))}

    def promoted(self, platform: str | None = None) -> str | None:
        """The promoted shared version, or with ``platform`` that platform's promoted version."""
        return self._pointer(platform)["version"]

    def history(self, platform: str | None = None) -> list[str]:
        """Previously promoted versions, oldest first (what ``rollback`` returns to)."""
        return list(self._pointer(platform)["history"])

    def path(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise ModelRejected(f"invalid version name {version!r}")
        return self.root / version

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.path(version) / MANIFEST
        if not path.is_file():
            raise ModelRejected(f"version {version} has no manifest (missing or half-written)")
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def model_path(self, version: str, fp16: bool = False) -> Path:
        return self.path(version) / ("model_fp16.onnx" if fp16 else "model.onnx")

    def item_model_path(self, version: str) -> Path:
        return self.path(version) / "item_model.onnx"

    def item_index(self, version: str) -> tuple[list[str], np.ndarray]:
        with np.load(self.path(version) / "items.npz", allow_pickle=False) as data:
            return [str(i) for i in data["ids"]], np.asarray(data["vectors"], dtype=np.float32)

    def resolve(self, version: str | None, platform: str | None = None) -> str:
        """``version`` itself, or the promoted one (of ``platform``) when None."""
        chosen = version or self.promoted(platform)
        if chosen is None:
            where = "" if platform is None else f" for platform {platform}"
            raise ModelRejected(f"no version given and none promoted{where} in {self.root}")
        return chosen

    # -- checking ---------------------------------------------------------
    def verify(self, version: str) -> dict[str, Any]:
        """Check a version end to end; returns its manifest or raises :class:`ModelRejected`."""
        return verify_dir(self.path(version))

    # -- writing ----------------------------------------------------------
    def _new_version_name(self, sha: str) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"v{stamp}-{sha[:8]}"
        n = 1
        while (self.root / name).exists():
            n += 1
            name = f"v{stamp}-{sha[:8]}-{n}"
        return name

    def publish(
        self,
        files: Mapping[str, str | os.PathLike[str]],
        manifest: Mapping[str, Any],
        *,
        promote: bool = True,
        force: bool = False,
        tolerance: float = 0.0,
        baseline: float | None = None,
    ) -> str:
        """Copy ``files`` into a new version, verify it, and make it visible atomically.

        ``files`` maps file names (``model.onnx``, ``item_model.onnx``,
        ``items.npz``, ...) to sources.  ``manifest`` carries the caller's
        fields (dimension, features, inputs, reference, metrics, ...); version,
        parent, created and checksums are filled in here.  If the new
        validation NDCG@10 is worse than ``baseline`` (default: the promoted
        version's recorded one) by more than ``tolerance``, the publish is
        refused with :class:`ModelRejected` unless ``force``.

        A manifest with ``platform`` is a platform version: its ``parent`` is
        the shared version it was fine-tuned from (given by the caller), and
        the gate and the promotion use that platform's pointer.
        """
        if "model.onnx" not in files:
            raise ValueError("a version needs model.onnx")
        self.root.mkdir(parents=True, exist_ok=True)
        platform = check_platform(manifest_platform(manifest))
        gate_against = self.promoted(platform)
        parent = self.promoted() if platform is None else manifest.get("parent")
        if platform is not None and not parent:
            raise ValueError("a platform version needs the parent (shared) version it was fine-tuned from")
        new_score = _valid_metric(manifest)
        if baseline is None and gate_against is not None:
            try:
                baseline = _valid_metric(self.manifest(gate_against))
            except ModelRejected:
                baseline = None
        if not force and baseline is not None and new_score is not None and new_score < baseline - tolerance:
            whose = "the promoted version's" if platform is None else f"the baseline's for platform {platform}"
            raise ModelRejected(
                f"validation {GATE_METRIC} {new_score:.4f} is worse than {whose} "
                f"{baseline:.4f} by more than {tolerance}; use force to publish anyway"
            )
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        staging.chmod(0o755)  # mkdtemp makes it private; workers may run as another user
        try:
            sums = {}
            for name, src in files.items():
                dst = staging / name
                shutil.copyfile(src, dst)
                sums[name] = sha256_file(dst)
            version = self._new_version_name(sums["model.onnx"])
            full = dict(manifest)
            full.update(
                version=version,
                parent=parent,
                created=datetime.now(UTC).isoformat(timespec="microseconds"),
                sha256=sums["model.onnx"],
                files=sums,
            )
            (staging / MANIFEST).write_text(json.dumps(full, indent=1, sort_keys=True), encoding="utf-8")
            verify_dir(staging)
            for entry in staging.iterdir():
                with entry.open("rb") as handle:
                    os.fsync(handle.fileno())
            _fsync_dir(staging)
            os.rename(staging, self.root / version)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if promote:
            self.promote(version, platform)
        return version

    def import_version(
        self,
        source: Registry,
        version: str,
        *,
        manifest_update: Mapping[str, Any] | None = None,
        promote: bool = True,
        force: bool = False,
        tolerance: float = 0.0,
    ) -> str:
        """Publish ``source``'s ``version`` here as a new version (same files, fresh name and checks).

        For moving a version between registries (staging to production) or
        re-publishing one; ``publish`` copies the files and re-verifies them.
        """
        original = source.manifest(version)
        dropped = ("version", "created", "sha256", "files") + (() if manifest_platform(original) else ("parent",))
        manifest = {k: v for k, v in original.items() if k not in dropped}
        manifest.update(manifest_update or {})
        files = {name: source.path(version) / name for name in source.manifest(version)["files"]}
        return self.publish(files, manifest, promote=promote, force=force, tolerance=tolerance)

    def _set_pointer(self, version: str, history: list[str], action: str, platform: str | None = None) -> None:
        body = {"version": version, "history": history, "updated": time.time()}
        _write_atomic(self._pointer_path(platform), json.dumps(body, indent=1))
        entry: dict[str, Any] = {"action": action, "version": version, "at": body["updated"]}
        if platform is not None:
            entry["platform"] = platform
        with (self.root / "promotions.log").open("a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")

    def promote(self, version: str, platform: str | None = None) -> str | None:
        """Point the version's pointer (``PROMOTED``, or ``PROMOTED.<platform>`` for a platform
        version) at it after verifying it, remembering the previous one for rollback.

        ``platform``, when given, must match the manifest's: a platform version never becomes the
        shared promoted one, nor a shared version a platform's.  Returns the version's platform.
        """
        manifest = self.verify(version)
        own = manifest_platform(manifest)
        if platform is not None and platform != own:
            raise ModelRejected(f"version {version} is {'shared' if own is None else 'for platform ' + own}, "
                                f"not for platform {platform}")
        pointer = self._pointer(own)
        history = pointer["history"]
        if pointer["version"] and pointer["version"] != version:
            history = [*history, pointer["version"]]
        self._set_pointer(version, history, "promote", own)
        return own

    def rollback(self, platform: str | None = None) -> str:
        """Re-promote the previously promoted version (of ``platform``); returns it."""
        pointer = self._pointer(platform)
        history = list(pointer["history"])
        while history:
            candidate = history.pop()
            if candidate != pointer["version"] and (self.root / candidate / MANIFEST).is_file():
                self.verify(candidate)
                self._set_pointer(candidate, history, "rollback", platform)
                return candidate
        where = "" if platform is None else f" for platform {platform}"
        raise ModelRejected(f"nothing to roll back to{where}: no earlier promoted version")

    def cleanup_staging(self, older_than_s: float = 3600.0) -> int:
        """Remove staging directories left by crashed publishes; returns how many."""
        removed = 0
        now = time.time()
        for entry in self.root.glob(STAGING_PREFIX + "*"):
            if now - entry.stat().st_mtime > older_than_s:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed


def verify_dir(directory: Path) -> dict[str, Any]:
    """Checks behind :meth:`Registry.verify`, on any version directory (also staging)."""
    from model.checks import check_version_dir

    return check_version_dir(directory)
