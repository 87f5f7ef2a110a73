"""A cached kernel is recompiled when a kernel it calls, in another file of its package, changes
(numba alone checks only the kernel's own file: eplb_server.numba_cache), and only then."""

import subprocess
import sys
import textwrap

PACKAGE = {
    "__init__.py": """
        import pathlib
        from eplb_server.numba_cache import install
        install(pathlib.Path(__file__).parent)
    """,
    "callee.py": """
        import numba
        @numba.njit(cache=True)
        def value():
            return 1
    """,
    "plain.py": """
        SCALE = 10  # no kernels here
    """,
    "caller.py": """
        import numba
        from .callee import value
        @numba.njit(cache=True)
        def tenfold():
            return value() * 10
    """,
}
RUN = "from toy.caller import tenfold; print(tenfold(), sum(tenfold.stats.cache_hits.values()))"


def _run(root):
    done = subprocess.run([sys.executable, "-c", RUN], cwd=root, capture_output=True, text=True,
                          timeout=300, check=True)
    answer, hits = done.stdout.split()
    return int(answer), int(hits)


def test_an_edit_of_a_callees_file_recompiles_its_cached_callers(tmp_path):
    package = tmp_path / "toy"
    package.mkdir()
    for name, text in PACKAGE.items():
        (package / name).write_text(textwrap.dedent(text))
    assert _run(tmp_path) == (10, 0)  # compiled
    assert _run(tmp_path) == (10, 1)  # loaded from the cache
    callee = package / "callee.py"
    callee.write_text(callee.read_text().replace("return 1", "return 2"))
    assert _run(tmp_path) == (20, 0)  # the caller's cache entry is stale: compiled again
    assert _run(tmp_path) == (20, 1)
    plain = package / "plain.py"
    plain.write_text(plain.read_text() + "# edited\n")
    assert _run(tmp_path) == (20, 1)  # a file without kernels is not part of the stamp
