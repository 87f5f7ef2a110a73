"""The engine worker process: warms up, then serves serialized jobs from its supervisor's socket.

Started by engine_process.ProcessEngine as `python -m eplb_server.engine_main FD CONFIG_JSON`.
Every message on the socket is a pickled tuple; see engine_process for the protocol.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection

_PR_SET_PDEATHSIG = 1
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the server's, for both processes
log = logging.getLogger("eplb_server")


def _die_with_parent():
    """The kernel kills this process when its supervisor dies, even mid-compile."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the closed socket still ends the loop
        pass


def _limit_threads(threads: int):
    """Before numba and torch load: OpenMP threads sleep instead of spinning when idle (a
    spinning pool takes the cores of the serving engine beside us)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["NUMBA_NUM_THREADS"] = str(max(1, threads))
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def serve(conn: Connection, config: dict):
    """Warm-up, then one job at a time until the socket closes. On a warm cache, ready comes
    after the common warm-up steps and the others run while no job waits. Torch is imported
    only for a CUDA device (numpy arrays go to the engine on the CPU)."""
    from . import warmup
    from .config import resolve_device, torch_version
    from .engine.threads import set_max_threads
    from .limits import Limits
    from .outcome import Outcome
    from .service import PlacementServicer

    set_max_threads(config["threads"])
    engine = importlib.import_module(config["engine_module"])
    servicer = PlacementServicer(engine, resolve_device(config["device"]),
                                 Limits(**config["limits"]))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    shapes = [warmup.Shape.parse(spec) for spec in config["warmup_shapes"]]
    start = time.perf_counter()
    steps = warmup.warm_up(servicer, shapes)
    step = total = 0
    for step, total, what in steps:
        conn.send(("progress", f"warm-up {step}/{total}: {what} "
                               f"({time.perf_counter() - start:.1f} s)"))
        if step == warmup.COMMON_STEPS and step < total and _compiled() == 0:
            break  # a warm cache: the rest loads while no job waits
    else:
        steps = None
    conn.send(("ready", dict(seconds=time.perf_counter() - start, device=str(servicer.device),
                             torch_version=torch_version(),
                             steps_later=0 if steps is None else total - step)))
    while True:
        if steps is not None and not conn.poll(0):
            steps = _next_step(steps)
            if steps is None:
                log.info("warm-up finished (%.1f s)", time.perf_counter() - start)
            continue
        try:
            method, data = conn.recv()
        except EOFError:
            return
        try:
            outcome = servicer.execute(method, data)
        except Exception as e:  # an engine fault: the supervisor answers INTERNAL
            outcome = Outcome("error", violations=[(type(e).__name__, traceback.format_exc())])
        conn.send(outcome)


def _compiled() -> int:
    """How many kernel signatures this process compiled rather than loaded from numba's cache."""
    from numba.core.dispatcher import Dispatcher

    return sum(sum(kernel.stats.cache_misses.values())
               for name, module in list(sys.modules.items()) if name.startswith("eplb_server.")
               for kernel in vars(module).values() if isinstance(kernel, Dispatcher))


def _next_step(steps):
    """One more warm-up request between jobs; None when there are no more (or one failed)."""
    try:
        next(steps)
        return steps
    except StopIteration:
        return None
    except Exception:  # the service runs on; the request that needs this kernel compiles it
        log.exception("warm-up step failed")
        return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    fd, config = int(argv[0]), json.loads(argv[1])
    _die_with_parent()
    logging.basicConfig(level=config.get("log_level", logging.INFO), stream=sys.stderr,
                        format=LOG_FORMAT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when this process ends
    _limit_threads(config["threads"])
    conn = Connection(fd)
    try:
        serve(conn, config)
    except Exception:
        try:
            conn.send(("failed", traceback.format_exc()))
        except OSError:
            pass
        raise


if __name__ == "__main__":
    main()
