"""Write outputs to a temporary place and move them into place only when complete.

An interrupted or failed run therefore never leaves a half-written output, and a previous
complete output at the same path survives until the new one is ready. Temporaries carry the
writing process's id (``.NAME.partial-PID-*``): a run that was killed leaves one behind, and the
next run writing NAME removes it (see :func:`clean_stale`).

A finished folder replaces the previous one in one atomic step where the kernel can exchange
two paths (Linux ``renameat2(RENAME_EXCHANGE)``); elsewhere in two renames, the previous output
first set aside as ``.NAME.old-PID-*``: a run killed between them leaves no NAME, and the next
run writing NAME (:func:`clean_stale`) puts the set-aside output back instead of deleting it.

:func:`output_lock` keeps two cirl processes from writing one output at once (an advisory
lock per output path; the second is refused with the holder's PID).

The finished output gets the permissions a plain ``open()`` or ``mkdir()`` would have given it
(0666 or 0777 less the umask), not the owner-only 0600/0700 of ``tempfile``'s temporaries, so
models and predictions on a shared volume stay readable by the team.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cirl.errors import CirlError

log = logging.getLogger(__name__)


def _umask() -> int:
    """The process's umask, read without changing it where the kernel says it (Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    # elsewhere it can only be read by setting it (a file created meanwhile by another
    # thread would get the temporary mask)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish(path: Path, mode: int) -> None:
    """Give a finished temporary the permissions a plain create would have."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, mode & ~_umask())


def _writable_parent(final: Path) -> Path:
    parent = final.parent
    blocking = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise CirlError(
            f"cannot create output {final}: {blocking} is a file, not a folder; choose "
            "another output path, or move the file away"
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CirlError(
            f"cannot create output folder {parent}: {exc.strerror}; "
            "choose an output path in a folder you can write to"
        ) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CirlError(
            f"output folder {parent} is not writable; "
            "choose an output path in a folder you can write to"
        )
    return parent


def _cannot_create(final: Path, exc: OSError) -> CirlError:
    """The output could not even be started in its folder (a virtual file system, a full or
    read-only disk): say so about the output, not about the temporary name."""
    from cirl.errors import describe_os_error

    reason = describe_os_error(exc).split(": ", 1)[1]
    return CirlError(f"cannot create output {final}: {reason}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def clean_stale(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove temporary outputs (``.NAME.partial-PID-*``, ``.NAME.old-PID-*``) in ``folder``
    left by a stage that was killed: those whose process is gone, or that carry no process id.

    Args:
        folder: where the outputs are written.
        name: only the temporaries of this output name; None: of every output.

    A set-aside previous output (``.NAME.old-PID-*``) whose NAME is missing, because its run
    was killed between the two renames of a replacement, is moved back to NAME instead.

    Returns:
        The removed (or restored) paths.
    """
    import re

    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    pattern = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?:(?P<pid>\d+)-)?")
    for entry in sorted(folder.iterdir()):
        match = pattern.match(entry.name)
        if not match or (name is not None and match.group("name") != name):
            continue
        pid = match.group("pid")
        if pid is not None and _pid_alive(int(pid)):
            continue  # another run is writing it right now
        final = folder / match.group("name")
        if match.group("kind") == "old" and not final.exists() and not final.is_symlink():
            os.rename(entry, final)
            log.warning("restored %s: a run was killed while replacing it", final)
            removed.append(entry)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def writable_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and check it is writable.

    Raises:
        CirlError: naming the folder when it cannot be created or written to.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CirlError(f"output {folder} exists and is not a folder; remove it or pick another")
    return _writable_parent(folder / ".probe")


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``final`` when the block completes.

    The temporary folder lives beside ``final`` (same file system, so the final move is a
    rename). If the block raises, the temporary folder is removed and ``final`` is untouched.

    Args:
        final: the folder the finished output should end up at.

    Yields:
        The temporary folder to write into.
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise CirlError(
            f"output {final} exists and is not a folder; remove it or pick another path"
        )
    parent = _writable_parent(final)
    clean_stale(parent, final.name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise _cannot_create(final, exc) from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, 0o777)
    if not final.exists():
        os.rename(tmp, final)
        return
    if exchange(tmp, final):  # one atomic step: tmp now holds the previous output
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-{os.getpid()}-", dir=parent))
    os.rmdir(old)
    os.rename(final, old)  # killed from here to the next line: clean_stale restores old
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``).

    Returns:
        True when swapped; False where the C library, kernel or file system cannot exchange
        (nothing is changed then).

    Raises:
        OSError: on any other failure (permissions, a missing path).
    """
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not glibc >= 2.28, or not Linux
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint)  # fmt: skip
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def output_lock(final: str | os.PathLike) -> Iterator[None]:
    """Hold an advisory lock on the output ``final`` for the block: one writer at a time.

    The lock is a file named by the output's resolved path under ``$TMPDIR/cirl-locks`` (so
    nothing is added beside the outputs, and no folder is made before the command's own
    checks); ``flock``, which the kernel releases when the process ends, however it ends, so a
    killed run never leaves it held. One machine's processes see each other's locks.

    Raises:
        CirlError: when another process holds it, naming its PID and the fix.
    """
    import fcntl
    import hashlib

    final = Path(final)
    key = hashlib.sha256(os.fsencode(final.resolve())).hexdigest()[:32]
    folder = Path(tempfile.gettempdir()) / "cirl-locks"
    try:
        folder.mkdir(mode=0o1777, exist_ok=True)
        fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # no lock where the temporary folder cannot hold one: the work goes on
        log.warning("no lock for %s: %s is not writable", final, folder)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").split()
            raise CirlError(
                f"{final} is being written by another cirl process (PID "
                f"{holder[0] if holder else 'unknown'}); wait for it to finish, or choose "
                "another output path"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {final.resolve()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_file(final: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary file path that atomically replaces ``final`` when the block completes.

    Args:
        final: the file the finished output should end up at.
        keep_suffix: end the temporary name with ``final``'s suffix too (for readers that
            tell formats by it, such as OpenVINO).

    Yields:
        The temporary path to write to (it does not exist yet).
    """
    final = Path(final)
    parent = _writable_parent(final)
    clean_stale(parent, final.name)
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{final.name}.partial-{os.getpid()}-",
            suffix=final.suffix if keep_suffix else "",
            dir=parent,
        )
    except OSError as exc:
        raise _cannot_create(final, exc) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _publish(tmp, 0o666)
    os.replace(tmp, final)
