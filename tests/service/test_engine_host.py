"""The engine thread's bookkeeping: each job's time in the queue, and no running-job age left
behind by a job whose deadline passed while it waited (the stuck-engine alert reads that age)."""

import asyncio
import threading
import time

import pytest
from eplb_server.outcome import Outcome
from eplb_server.worker import DeadlineExpired, ThreadEngine


class HeldServicer:
    """Answers each job with its own bytes once `release` is set."""

    device = "cpu"

    def __init__(self):
        self.release = threading.Event()

    def execute(self, method, data):
        self.release.wait(10)
        return Outcome("ok", data=data)


def test_queue_time_and_no_age_left_by_an_expired_job():
    async def scenario():
        servicer = HeldServicer()
        engine = ThreadEngine(servicer, max_pending=4)
        try:
            first = asyncio.ensure_future(engine.run("Rebalance", b"first"))
            await asyncio.sleep(0.1)
            assert engine.job_seconds() > 0.05  # the first job holds the engine thread
            queued = asyncio.ensure_future(engine.run("Rebalance", b"queued"))
            expiring = asyncio.ensure_future(
                engine.run("Rebalance", b"expiring", time.monotonic() + 0.05))
            await asyncio.sleep(0.3)
            servicer.release.set()
            done, waited = await first, await queued
            with pytest.raises(DeadlineExpired):
                await expiring
            assert done.data == b"first" and done.timings["queue"] < 0.1
            assert waited.data == b"queued" and waited.timings["queue"] >= 0.25
            assert engine.job_seconds() == 0.0
        finally:
            servicer.release.set()
            engine.shutdown()

    asyncio.run(scenario())
