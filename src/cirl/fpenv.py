"""The calling thread's floating-point environment, kept apart for inference and training.

A CPU thread's floating-point environment (on x86 the MXCSR register: rounding, exception masks,
flush-to-zero and denormals-are-zero) decides whether subnormal floats (below 1.2e-38) are
computed or read as zero. Inference wants them as zero (:mod:`cirl.models.inference` says why: up to
14x faster); training must not, or its weights stop being what a fresh process computes.
onnxruntime's ``session.set_denormal_as_zero`` sets the mode on the thread that creates the
session and never clears it, so an ONNX check followed by training in the same process
(``cirl audit --verify --retrain``) trained with a flushing main thread. Here the environment
is saved and restored with C's ``fegetenv``/``fesetenv`` (``fenv_t`` holds MXCSR on x86-64 and
FPCR on AArch64), so inference code can switch the mode on for exactly as long as it runs.

Where the C library offers no ``fegetenv`` (not glibc/musl/macOS), the helpers do nothing and
:func:`available` says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import sys
from collections.abc import Iterator

import numpy as np

# larger than any fenv_t (32 bytes on x86-64 glibc, 8 on AArch64)
_ENV_BYTES = 128
_libm: ctypes.CDLL | bool | None = None


def _lib() -> ctypes.CDLL | None:
    global _libm
    if _libm is None:
        _libm = False
        for name in (ctypes.util.find_library("m"), None):
            try:
                lib = ctypes.CDLL(name)
                lib.fegetenv.argtypes = lib.fesetenv.argtypes = [ctypes.c_void_p]
                lib.fegetenv.restype = lib.fesetenv.restype = ctypes.c_int
            except (OSError, AttributeError):
                continue
            _libm = lib
            break
    return _libm or None


def available() -> bool:
    """Whether this platform's C library lets the environment be saved and restored."""
    return _lib() is not None


def get() -> bytes | None:
    """The calling thread's floating-point environment (None where unavailable)."""
    lib = _lib()
    if lib is None:
        return None
    buffer = ctypes.create_string_buffer(_ENV_BYTES)
    if lib.fegetenv(buffer) != 0:
        return None
    return buffer.raw


def set_env(env: bytes | None) -> None:
    """Make ``env`` (from :func:`get`) the calling thread's environment; None does nothing."""
    lib = _lib()
    if lib is None or env is None:
        return
    buffer = ctypes.create_string_buffer(env, _ENV_BYTES)
    if lib.fesetenv(buffer) != 0:
        raise OSError("fesetenv failed to restore the floating-point environment")


@contextlib.contextmanager
def preserved() -> Iterator[None]:
    """Run the block, then give the calling thread back the environment it had before."""
    before = get()
    try:
        yield
    finally:
        set_env(before)


# Where the flush bits live in glibc's fenv_t: (byte offset of a uint32, its flush bits).
_FLUSH_BITS = {
    "x86_64": (28, 0x8040),  # __mxcsr: flush-to-zero (bit 15) and denormals-are-zero (bit 6)
    "amd64": (28, 0x8040),
    "aarch64": (0, 1 << 24),  # __fpcr: FZ
    "arm64": (0, 1 << 24),
}
# this machine's entry, looked up once: flushing() runs around every inference batch
_FLUSH_HERE = (
    _FLUSH_BITS.get(platform.machine().lower()) if sys.platform.startswith("linux") else None
)


def with_flush(env: bytes | None) -> bytes | None:
    """``env`` with subnormals flushed to zero (None where the layout is not known here)."""
    if env is None or _FLUSH_HERE is None:
        return None
    offset, bits = _FLUSH_HERE
    word = int.from_bytes(env[offset : offset + 4], sys.byteorder) | bits
    return env[:offset] + word.to_bytes(4, sys.byteorder) + env[offset + 4 :]


@contextlib.contextmanager
def flushing() -> Iterator[None]:
    """Run the block with subnormals flushed to zero in the calling thread, then restore its
    environment (inference engines: the calling thread computes a share of each run)."""
    before = get()
    set_env(with_flush(before))  # None (unknown layout) changes nothing
    try:
        yield
    finally:
        set_env(before)


def flushes_subnormals() -> bool:
    """Whether the calling thread computes subnormal floats as zero right now."""
    tiny = np.array([1e-38], np.float32)  # normal; a tenth of it is subnormal
    return bool((tiny * np.float32(0.1))[0] == 0.0)
