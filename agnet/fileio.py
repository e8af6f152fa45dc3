"""File I/O shared by every stage: atomic writes and content hashes.

* :func:`atomic_path` / :func:`write_text` / :func:`write_bytes`: write to a temporary sibling, then
  ``os.replace`` it into place, so a killed job leaves either the previous complete file or none, never a
  truncated one. The writer holds a lock on its temporary (its name also says which host and process wrote it):
  the next write of the same file removes what a killed writer left, a minute on, never a living writer's
  (:func:`remove_stale_temporaries`).
* :func:`file_set` / :func:`check_complete`: several files written as one set (the aggregate tables): staged in a
  temporary folder, then renamed into place under an "incomplete" marker that is removed last, so a reader refuses
  a set a kill left half old and half new.
* :func:`sha256_file`: the SHA-256 a file is identified by in every provenance record (downloads, manifests,
  models, features, metrics).
* :func:`relative_location` / :func:`locate`: a folder recorded inside a file both absolutely and, when it lies
  under the recording file's folder, relative to it — so a results tree moved or copied elsewhere as a whole
  still finds its own data (a synthetic twin, an unpacked archive), while data outside it keeps its absolute path.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import posixpath
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from agnet.errors import AgnetError

_HOST = socket.gethostname().replace("/", "_")
STALE_AFTER_S = 24 * 3600  # a temporary whose writer cannot be told (no file locks here) is removed after a day
UNLOCKED_GRACE_S = 60  # an unlocked temporary younger than this may be one whose writer is about to lock it
SET_MARKER = ".file-set-incomplete"


def _writer() -> str:
    """``host-pid`` of this process, written into its temporaries' names (for people reading a folder)."""
    return f"{_HOST}-{os.getpid()}"


def _lock(fd: int) -> None:
    """Hold an exclusive advisory lock on ``fd`` for as long as it is open: a living writer's mark on its temporary
    (released by the kernel when the process dies, however it dies)."""
    with contextlib.suppress(OSError):  # a file system without locks: the age rule decides instead
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _is_stale(path: Path) -> bool:
    """Whether a temporary's writer is gone: no process holds its lock (and it is older than a minute), or, where
    locks cannot be taken, it is older than a day. A living writer's temporary is never stale, whatever host, PID
    namespace or container it runs in."""
    try:
        age = time.time() - path.stat().st_mtime
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # held: a writer is at work
    except OSError:
        return age > STALE_AFTER_S
    finally:
        os.close(fd)
    return age > UNLOCKED_GRACE_S


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Remove the temporary siblings of ``target`` (``.<name>.<host>-<pid>.<random>.tmp``) that a killed writer left:
    those whose writer's lock is gone (:func:`_is_stale`). Returns what was removed."""
    target = Path(target)
    removed = []
    prefix = f".{target.name}."
    for path in target.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        if _is_stale(path):
            with contextlib.suppress(OSError):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    The temporary file is removed if the body raises. Parent directories are created.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{_writer()}.", suffix=".tmp", dir=target.parent)
    _lock(fd)  # kept until the temporary is renamed or removed: it is not stale while this process lives
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        yield tmp
        os.replace(tmp, target)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None and error.filename is None:
            error.filename = str(target)  # a failed write (e.g. disk full) names the file it was writing
        raise
    finally:
        os.close(fd)


def write_text(target: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Atomically write ``text`` to ``target``."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_bytes(target: str | Path, data: bytes) -> None:
    """Atomically write ``data`` to ``target``."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Return the lowercase hexadecimal SHA-256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def relative_location(target: str | Path, recorded_in: str | Path) -> str | None:
    """``target`` relative to the folder of the file ``recorded_in`` (POSIX), or None when it is not under it."""
    base = Path(recorded_in).resolve().parent
    try:
        return Path(target).resolve().relative_to(base).as_posix()
    except ValueError:
        return None


def locate(absolute: str, relative: str | None, recorded_in: str | Path) -> Path:
    """The folder a file records: its relative location (resolved from ``recorded_in``'s folder) where that exists,
    else the absolute one."""
    if relative:
        moved = Path(recorded_in).resolve().parent / posixpath.normpath(relative)
        if moved.is_dir():
            return moved
    return Path(absolute)


@contextlib.contextmanager
def file_set(out_dir: str | Path, names: Sequence[str]) -> Iterator[dict[str, Path]]:
    """Write the files ``names`` of ``out_dir`` as one set: yields a temporary path per name (in a staging folder
    beside them); when the body returns, the marker ``.file-set-incomplete`` (listing the names) is written, each
    file renamed into place, and the marker removed. A kill before the renames leaves the old set; during them, the
    marker, which :func:`check_complete` refuses until the set is written again. A failed body leaves the old set."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    anchor = out_dir / SET_MARKER
    remove_stale_temporaries(anchor)
    staging = Path(tempfile.mkdtemp(prefix=f".{SET_MARKER}.{_writer()}.", suffix=".tmp", dir=out_dir))
    lock = os.open(staging, os.O_RDONLY)
    _lock(lock)
    try:
        yield {name: staging / name for name in names}
        missing = [name for name in names if not (staging / name).is_file()]
        if missing:
            raise AgnetError(f"{out_dir}: the set was not written whole (no {', '.join(missing)})")
        write_text(anchor, json.dumps({"files": list(names)}) + "\n")
        for name in names:
            os.replace(staging / name, out_dir / name)
        anchor.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(lock)


def check_complete(path: str | Path) -> None:
    """Refuse a file of a set that a killed writer left half renamed (:func:`file_set`)."""
    path = Path(path)
    marker = path.parent / SET_MARKER
    if not marker.is_file():
        return
    try:
        names = json.loads(marker.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        names = [path.name]
    if path.name in names:
        raise AgnetError(f"{path}: its set ({', '.join(names)}) was being replaced when the writer stopped, so it may "
                         f"mix old and new files ({marker} is still there); write the set again: rerun `agnet "
                         "aggregate` (in the workflow: `snakemake --forcerun aggregate`)")
