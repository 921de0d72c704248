"""Safe file moves and writes: a final location never holds half a product."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from labpipe.errors import ConflictError, InvalidInput

CHUNK = 4 << 20


def sha256_file(path: Path, *, progress=None) -> str:
    """Hex SHA-256 of a file's content, read in chunks; ``progress(done, total)`` after each chunk."""
    digest, done, total = hashlib.sha256(), 0, os.path.getsize(path) if progress else 0
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
            if progress:
                done += len(block)
                progress(done, total)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry list to disk (what a rename must wait for to be durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(top: Path) -> None:
    """fsync every regular file and folder under ``top`` (``top`` itself included), deepest first."""
    top = Path(top)
    if top.is_symlink() or not top.exists():
        return
    if not top.is_dir():
        fsync_path(top)
        return
    for dirpath, _, filenames in os.walk(top, topdown=False):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                fsync_path(path)
        fsync_path(Path(dirpath))


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:  # a libc without renameat2 (glibc < 2.28, not Linux)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # a kernel or file system without it
        return False
    raise OSError(error, os.strerror(error), str(b))


@contextlib.contextmanager
def atomic_path(final: Path, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success make it durable and rename it into place.

    Works for files and folders. What the caller wrote is fsynced before the rename and the
    parent folder after it, so a power cut leaves either the old ``final`` or the whole new
    one. An existing folder is swapped with the new one in one step (``renameat2`` with
    ``RENAME_EXCHANGE``) and deleted after, so a kill at any point leaves a whole old or a whole
    new folder in place, never a partly deleted one. On error the temporary is removed and
    ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    work = tmp / (final.name + suffix)
    try:
        yield work
        fsync_tree(work)
        if final.is_dir() and not final.is_symlink() and _exchange(work, final):
            fsync_path(final.parent)  # the old folder is now at ``work``: removed with ``tmp`` below
        elif final.is_dir() and not final.is_symlink():  # no atomic exchange here: move it aside first
            os.rename(final, tmp / ".old")
            try:
                os.replace(work, final)
            except BaseException:
                os.rename(tmp / ".old", final)
                raise
            fsync_path(final.parent)
        else:
            os.replace(work, final)
            fsync_path(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(final: Path, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def atomic_write_text(final: Path, text: str) -> Path:
    return atomic_write_bytes(final, text.encode())


def move_file_safely(source: Path, dest: Path, *, checksum: str | None = None) -> str:
    """Move ``source`` to ``dest`` without ever overwriting a different file.

    Returns the SHA-256 of the moved content. If ``dest`` already holds the same
    bytes the source is removed (the move already happened, e.g. before a
    crash); if it holds different bytes a ``ConflictError`` is raised and
    nothing is touched. Across file systems the copy goes to a temporary name
    beside ``dest``, is verified, then renamed.
    """
    source, dest = Path(source), Path(dest)
    if not stat.S_ISREG(os.lstat(source).st_mode):  # never follow a link or open a FIFO or device
        raise InvalidInput(source, "is not a regular file", "only regular files are moved; remove or replace it")
    digest = checksum or sha256_file(source)
    if dest.exists():
        if sha256_file(dest) != digest:
            raise ConflictError(
                dest, "a different file of the same name is already there", f"rename {source} or resolve by hand"
            )
        source.unlink()
        return digest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)  # atomic, fails if dest appeared meanwhile
        fsync_path(dest)  # the data, then the new name, are on disk before the old name goes
        fsync_path(dest.parent)
        source.unlink()
        fsync_path(source.parent)
        return digest
    except FileExistsError:
        return move_file_safely(source, dest, checksum=digest)
    except OSError:
        pass  # another file system, or links unsupported
    with atomic_path(dest) as tmp:
        shutil.copy2(source, tmp, follow_symlinks=False)
        if sha256_file(tmp) != digest:
            raise ConflictError(source, "copy does not match the source checksum", "check the disk and retry")
    source.unlink()  # atomic_path made the copy and its folder durable first
    fsync_path(source.parent)
    return digest


MAX_COMPONENT_BYTES = 255  # NAME_MAX of every Linux file system labpipe writes to


def path_component(name: object, *, what: str = "name") -> str:
    """``name`` as one path component, or ``InvalidInput`` saying why it cannot be one.

    Every user-supplied name that becomes part of a path (run, model, upload, VM and
    retention entry names) goes through here: it refuses ``.``/``..``, separators, NUL
    and other control characters, leading or trailing blanks and names longer than one
    file name may be, so a name can never reach outside the folder it is joined to.
    """
    text = name if isinstance(name, str) else str(name)
    problem = None
    if not text:
        problem = "is empty"
    elif text in (".", ".."):
        problem = f"is {text!r}, which names a folder rather than an entry in it"
    elif "/" in text or "\\" in text:
        problem = "contains a path separator ('/' or '\\')"
    elif any(ord(c) < 32 or ord(c) == 127 for c in text):
        problem = "contains NUL or another control character (newline, tab, escape, ...)"
    elif text != text.strip():
        problem = "starts or ends with blanks"
    elif len(text.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
        problem = f"is {len(text.encode('utf-8', 'surrogateescape'))} bytes long (at most {MAX_COMPONENT_BYTES})"
    if problem:
        raise InvalidInput(
            repr(text[:80]), f"{what} {problem}", "use a plain name of letters, digits, '.', '-' and '_'"
        )
    return text
