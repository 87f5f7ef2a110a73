"""A server whose warm-up fails never reports SERVING and exits with status 1 by itself."""

from .servicekit import ServerProcess


def test_failed_warm_up_exits_1(tmp_path):
    # 8 GPUs do not divide 30 slots: the shape parses, its first request is invalid.
    server = ServerProcess(["--listen", "127.0.0.1:0", "--metrics-port", "0", "--device", "cpu",
                            "--warmup-shapes", "2x16:30:8:2:4"], tmp_path / "server.log")
    try:
        status = server.proc.wait(timeout=120)
    finally:
        server.stop()  # closes the log (and ends the server if it still runs)
    assert status == 1, server.log()
    assert "warm-up failed" in server.log() and "serving\n" not in server.log()
