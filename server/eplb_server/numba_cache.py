"""Numba's on-disk cache keyed on every source file of a package, not only the kernel's own.

A cached kernel holds the code of the kernels it calls, from other files too; numba checks only
the caller's file, so after an edit of a callee's file the caller ran the old callee from the
cache (a checkout updated in place). `install(directory)` makes every cached kernel defined under
`directory` stale as soon as a .py file there that defines kernels changes.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib

from numba.core import caching


@functools.lru_cache(maxsize=None)
def package_stamp(directory: str) -> str:
    """sha256 over the names and contents of the .py files under `directory` that define
    kernels (read once per process; an edit elsewhere, say of api.py, recompiles nothing)."""
    digest = hashlib.sha256()
    for path in sorted(pathlib.Path(directory).rglob("*.py")):
        text = path.read_bytes()
        if b"njit" in text:
            digest.update(str(path.relative_to(directory)).encode() + b"\0" + text)
    return digest.hexdigest()


def _stamped(base, directory: str):
    """`base` (a numba locator class), stamped with the package's sources for its files."""

    class PackageStamped(base):
        package = directory

        def get_source_stamp(self):
            return (super().get_source_stamp(), package_stamp(directory))

        @classmethod
        def from_function(cls, py_func, py_file):
            inside = pathlib.Path(directory) in pathlib.Path(py_file).resolve().parents
            return super().from_function(py_func, py_file) if inside else None

    PackageStamped.__name__ = f"PackageStamped{base.__name__.lstrip('_')}"
    return PackageStamped


def install(directory) -> bool:
    """Puts package-stamped copies of numba's user-directory and in-tree locators first; False
    (numba's own behaviour kept) where this numba names them otherwise."""
    directory = str(pathlib.Path(directory).resolve())
    bases = [getattr(caching, name, None) for name in (
        "UserProvidedCacheLocator", "_UserProvidedCacheLocator", "InTreeCacheLocator",
        "_InTreeCacheLocator")]
    bases = [base for base in bases if base is not None]
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    if len(bases) != 2 or not isinstance(getattr(impl, "_locator_classes", None), list):
        return False
    if not any(getattr(c, "package", None) == directory for c in impl._locator_classes):
        impl._locator_classes[:0] = [_stamped(base, directory) for base in bases]
    return True
