"""The one exception type that reaches users as a message instead of a stack trace."""


class CirlError(Exception):
    """A problem the user can fix: the message says what was wrong, where, and how to fix it.

    The CLI prints it as ``error: <message>`` and exits with status 2.
    """


_FIXES = {
    "ENOSPC": "the disk is full: free space there, or choose an output on another disk",
    "EDQUOT": "the disk quota is used up: free space there, or choose another output path",
    "EROFS": "the file system is read-only: choose an output path on a writable one",
    "EACCES": "permission denied: choose a path you can write to, or fix its permissions",
    "EPERM": "not permitted: choose a path you can write to",
    "ENOENT": "a folder on the way does not exist or cannot hold files: check the path",
    "ENOTDIR": "a part of the path is a file, not a folder: check the path",
    "EISDIR": "the path is a folder, not a file: check the path",
    "ENAMETOOLONG": "the path is too long: choose a shorter one",
    "EMFILE": "too many open files: raise the limit (ulimit -n)",
}


def describe_os_error(exc: OSError, output: object = None) -> str:
    """One line for an ``OSError`` a user can act on: the path, what failed, the fix.

    Args:
        exc: the error.
        output: the command's output, named when the error carries no path of its own.
    """
    import errno
    import os

    name = errno.errorcode.get(exc.errno or 0, "")
    if exc.filename is not None:
        where = exc.filename
    elif output is not None:
        where = f"writing {output}"
    else:
        where = "(no path given)"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    what = exc.strerror or os.strerror(exc.errno or 0)
    fix = _FIXES.get(name, "check the path and the disk")
    return f"{where}: {what} [{name or type(exc).__name__}]; {fix}"


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's text, its first line only, at most ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else ""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as ``Type: text`` with all its text folded onto one line (for a message
    that quotes a library's multi-line error, or a tag)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"
