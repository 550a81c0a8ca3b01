"""Output safety shared by every writing command: never touch an input, fail early on an unwritable output, and
clean up what a killed run left behind.

* :class:`InputGuard` knows a run's inputs (image and label files, the folders they lie in, the dataset's
  ``dataset.json`` or manifest, a model file) and refuses an output that is one of those files, is one of those
  folders, or lies directly in one (exit 2 with a message). Outputs may sit in a sub-folder of a data folder, since
  nothing reads those as inputs; a mask written into ``labelsTr`` would be read as ground truth by the next run.
* :func:`prepare_output_dir` / :func:`prepare_output_file` create the output location and prove it is writable by
  writing and removing a probe file, before a command loads a model or reads data, so a read-only folder costs a
  one-line message instead of an hour of inference and a traceback.
* :func:`clean_orphans` removes the temporary files of :func:`medattn.data.io.atomic_path` that a killed process
  left (a ``kill -9`` skips every ``finally``); the temporary names carry the writer's host and process id, so a
  file a live process is still writing is never removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from medattn.data.io import TEMP_TAG, host_tag
from medattn.data.manifest import Manifest
from medattn.errors import ConfigError
from medattn.typing import PathLike

log = logging.getLogger(__name__)

#: ``.<name>.medattn-tmp-<host>-<pid>-<random>.tmp<suffix>``, the names :func:`medattn.data.io.atomic_path` gives.
_TEMP = re.compile(rf"^\..+\.{re.escape(TEMP_TAG)}(?P<host>[0-9a-f]{{8}})-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp.*$")
#: Files that describe a dataset folder (MSD / nnU-Net, medattn, BIDS): inputs, whatever command reads them.
DESCRIPTION_FILES = (
    "dataset.json",
    "manifest.json",
    "dataset_description.json",
    "participants.tsv",
    "participants.json",
)
#: Age after which a temporary file of another host (a shared file system, another container) is an orphan.
_FOREIGN_AGE_S = 24 * 3600.0


def _forms(path: PathLike) -> set[Path]:
    """The absolute path as given and with every symbolic link resolved (an input may be reached either way)."""
    p = Path(path).expanduser()
    forms = {Path(os.path.abspath(p))}
    with contextlib.suppress(OSError, RuntimeError):
        forms.add(p.resolve())
    return forms


@dataclass(frozen=True)
class InputGuard:
    """The inputs of one run, which no output may overwrite or sit beside.

    Attributes:
        files: input files (images, labels, predictions being scored, a model, the dataset description).
        folders: folders holding image or label files (an output may not be one or lie directly in one).
        trees: inputs that are folders themselves (a DICOM series): nothing may be written anywhere inside them.
    """

    files: frozenset[Path] = frozenset()
    folders: frozenset[Path] = frozenset()
    trees: frozenset[Path] = frozenset()

    @classmethod
    def of(
        cls,
        data_files: Iterable[PathLike] = (),
        other_files: Iterable[PathLike] = (),
        dataset: PathLike | None = None,
    ) -> InputGuard:
        """A guard for ``data_files`` (images, labels: their folders are protected too), ``other_files`` (only
        the files: a model, predictions) and ``dataset`` (a manifest or dataset.json, or a dataset folder whose
        ``dataset.json`` / ``manifest.json`` is then protected)."""
        files: set[Path] = set()
        folders: set[Path] = set()
        trees: set[Path] = set()
        for f in data_files:
            for form in _forms(f):
                files.add(form)
                folders.add(form.parent)
                if form.is_dir():
                    trees.add(form)
        for f in other_files:
            files |= _forms(f)
        if dataset is not None:
            spec = Path(dataset)
            if spec.is_dir():
                for name in DESCRIPTION_FILES:
                    if (spec / name).is_file():
                        files |= _forms(spec / name)
            elif spec.exists():
                files |= _forms(spec)
                for name in DESCRIPTION_FILES:  # a dataset.json's or manifest's neighbours (BIDS: the root's files)
                    if (spec.parent / name).is_file():
                        files |= _forms(spec.parent / name)
        return cls(frozenset(files), frozenset(folders), frozenset(trees))

    @classmethod
    def of_manifest(
        cls,
        manifest: Manifest,
        data_root: str | Path | None = None,
        dataset: str | Path | None = None,
        other_files: Iterable[PathLike] = (),
    ) -> InputGuard:
        """A guard for every image and label file of ``manifest`` and its description file (``dataset``: the
        manifest JSON, dataset.json or dataset folder as the user named it; a ``:DOMAIN`` suffix is ignored)."""
        root = manifest.data_root(data_root)
        files = [root / p for _, c in manifest.iter_cases() for p in (*c.images, *([c.label] if c.label else []))]
        if dataset is not None:
            from medattn.data.importers import split_spec

            dataset = split_spec(dataset)[0]
        return cls.of(files, other_files, dataset)

    def __or__(self, other: InputGuard) -> InputGuard:
        return InputGuard(self.files | other.files, self.folders | other.folders, self.trees | other.trees)

    def check_file(self, target: PathLike, what: str) -> None:
        """Refuse writing the file ``target`` (``what`` names the option, e.g. ``-o``).

        Raises:
            ConfigError: ``target`` is an input file or lies directly in an input's image or label folder.
        """
        forms = _forms(target)
        self._check_trees(forms, target, what)
        if forms & self.files:
            raise ConfigError(f"{what} {target} is one of the run's input files; choose another path")
        if {f.parent for f in forms} & self.folders:
            raise ConfigError(
                f"{what} {target} lies in a folder of the input dataset's images or labels; "
                "write it somewhere else (a file there would be read as data by the next run)"
            )

    def check_dir(self, target: PathLike, what: str) -> None:
        """Refuse writing into the folder ``target``.

        Raises:
            ConfigError: ``target`` is an input file, or is a folder of the input dataset's images or labels.
        """
        forms = _forms(target)
        self._check_trees(forms, target, what)
        if forms & self.files:
            raise ConfigError(f"{what} {target} is one of the run's input files; give a folder")
        if forms & self.folders:
            raise ConfigError(
                f"{what} {target} is a folder of the input dataset's images or labels; writing there would mix "
                "outputs with the data (and could overwrite them): choose another folder"
            )

    def _check_trees(self, forms: set[Path], target: PathLike, what: str) -> None:
        for tree in self.trees:
            if any(f == tree or tree in f.parents for f in forms):
                raise ConfigError(
                    f"{what} {target} lies inside the input series folder {tree}; write it somewhere else (a DICOM"
                    " folder must hold only its series' files)"
                )


def prepare_output_dir(path: PathLike, what: str = "output folder", *, clean: bool = True) -> Path:
    """Create the folder ``path`` if needed, prove it is writable, and remove orphaned temporary files in it.

    Raises:
        ConfigError: ``path`` is a file, or cannot be created or written (one line, naming the folder).
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _probe(folder)
    except OSError as e:
        raise ConfigError(f"{what} {folder}: cannot write there ({e.strerror or e}); choose another folder") from e
    if clean:
        clean_orphans(folder)
    return folder


def prepare_output_file(path: PathLike, what: str = "output file") -> Path:
    """Check that the file ``path`` can be written (its folder created and writable) before any work is done.

    Raises:
        ConfigError: ``path`` is a folder, or its folder cannot be created or written.
    """
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{what} {target} is a folder; give a file name")
    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _probe(folder)
        if target.exists() and not os.access(target, os.W_OK):
            raise PermissionError(13, "the file is read-only")
    except OSError as e:
        raise ConfigError(f"{what} {target}: cannot write it ({e.strerror or e}); choose another path") from e
    clean_orphans(folder)
    return target


def _probe(folder: Path) -> None:
    """Create and remove a file in ``folder`` (``os.access`` is not enough: read-only mounts, ACLs, quotas)."""
    probe = folder / f".medattn-probe-{host_tag()}-{os.getpid()}"
    fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    os.close(fd)
    os.unlink(probe)


def clean_orphans(folder: PathLike, *, recursive: bool = False) -> list[Path]:
    """Remove the temporary files a killed medattn process left in ``folder``; return what was removed.

    A temporary file is an orphan when its writer (host and process id in its name) is this host and that process
    no longer runs, or, for another host's files, when it is older than a day.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    candidates = root.rglob(".*") if recursive else root.glob(".*")
    now = time.time()
    me = host_tag()
    for p in candidates:
        m = _TEMP.match(p.name)
        if m is None:  # not ours (earlier versions' unnamed temporary files are left alone too)
            continue
        try:
            if not p.is_file() or p.is_symlink():
                continue
            if m["host"] == me:
                orphan = not _alive(int(m["pid"]))
            else:
                orphan = now - p.stat().st_mtime > _FOREIGN_AGE_S
            if orphan:
                p.unlink()
                removed.append(p)
        except OSError as e:
            log.debug("could not remove %s: %s", p, e)
    if removed:
        log.info("removed %d temporary file(s) a killed run left in %s", len(removed), root)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True
