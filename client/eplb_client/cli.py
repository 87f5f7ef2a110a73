"""eplb-client: rebalance, evaluate, report, bench and health from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NO_STATUS, EXIT_NOT_SERVING = 0, 1, 2, 3, 4
TOPO = "--num-replicas 288 --num-groups 8 --num-nodes 4 --num-gpus 32"
EXAMPLES = {
    "rebalance": f"eplb-client rebalance loads.json {TOPO} --out plan.json\n"
                 f"  eplb-client rebalance next.json {TOPO} --current plan.json "
                 "--max-moved-slots-per-layer 32",
    "evaluate": "eplb-client evaluate loads.json --phy2log plan.json --num-groups 8 "
                "--num-nodes 4 --num-gpus 32",
    "report": f"eplb-client report loads.json {TOPO} --png report.png",
    "bench": f"eplb-client bench --requests 200 --concurrency 4 {TOPO}  # synthetic 58x256",
    "health": "eplb-client health --target unix:///run/eplb.sock && echo serving",
    "replay": "eplb-client replay --trace windows.npz --interval 4 --max-moved-slots-per-layer 16 "
              "--png replay.png",
}


def _connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--target", default=None,
                   help="host:port or unix:///path; comma-separate several to round-robin "
                        "(default: $EPLB_TARGET, else localhost:50051)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per call (default 60)")
    g.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    g.add_argument("--tls-ca", help="PEM file of root certificates (implies TLS)")
    g.add_argument("--tls-cert", help="PEM client certificate chain (mutual TLS)")
    g.add_argument("--tls-key", help="PEM client private key (mutual TLS)")
    g.add_argument("--tls-server-name", help="expected server name in its certificate")


def _topology(p, *, replicas=True, defaults=None, policy_help=None) -> None:
    d = defaults or {}
    g = p.add_argument_group("topology")
    if replicas:
        g.add_argument("--num-replicas", type=int, required="P" not in d, default=d.get("P"),
                       help="physical slots per layer (P)")
    g.add_argument("--num-groups", type=int, required="K" not in d, default=d.get("K"),
                   help="expert groups (K; 1 if the model has none)")
    g.add_argument("--num-nodes", type=int, required="N" not in d, default=d.get("N"),
                   help="nodes (N)")
    g.add_argument("--num-gpus", type=int, required="G" not in d, default=d.get("G"),
                   help="GPUs (G)")
    g.add_argument("--policy", default=None if policy_help else "auto",
                   choices=["auto", "hierarchical", "global", "deepseek"],
                   help=policy_help or "auto (default): hierarchical when groups divide over "
                                       "nodes, else global")


def _loads(p, *, optional=False) -> None:
    p.add_argument("loads", nargs="?" if optional else None,
                   help="[L, E] (or [T, L, E]) loads: .json (plain or {\"logical_count\": ...}), "
                        ".npy, .npz or .safetensors")
    p.add_argument("--key", help="array name inside a .json object, .npz or .safetensors file")


def _planning(p) -> None:
    g = p.add_argument_group("planning")
    g.add_argument("--current", help="current phy2log [L, P] (.json, .npy, .npz, .safetensors; "
                                     "a saved plan's \"phy2log\" works)")
    g.add_argument("--current-key", help="array name inside the --current file")
    g.add_argument("--slot-loads", action="store_true",
                   help="the loads are per physical slot [L, P] (needs --current)")
    g.add_argument("--num-logical-experts", type=int, default=0, help="E, with --slot-loads")
    g.add_argument("--max-moved-slots-per-layer", type=int, default=0, help="0: unlimited")
    g.add_argument("--max-moved-slots-total", type=int, default=0, help="0: unlimited")
    g.add_argument("--min-balancedness-gain", type=float, default=0.0)
    g.add_argument("--from-scratch", action="store_true",
                   help="ignore --current when planning (it is still scored)")
    g.add_argument("--objective", choices=["sum", "expected_peak", "recency", "robust", "adaptive"],
                   help="what a plan fitted to a [T, L, E] history optimises (default: the "
                        "server's, adaptive)")
    g.add_argument("--half-life", type=float, default=0.0)
    g.add_argument("--robust-k", type=float, default=0.0)
    g.add_argument("--model", default="", help="model name, for the server's logs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eplb-client", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Client for the EPLB placement service.",
        epilog="examples:\n" + "\n".join(f"  {v}" for v in EXAMPLES.values()))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=f"example:\n  {EXAMPLES[name]}")
        _connection(p)
        return p

    p = command("rebalance", "Plan a placement; the plan goes to stdout (or --out) as JSON.")
    _loads(p)
    _topology(p)
    _planning(p)
    p.add_argument("--out", help="write the JSON here instead of stdout")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    p.add_argument("--format", choices=["json", "sglang"], default="json",
                   help="json: the whole result; sglang: {\"physical_to_logical_map\": ...} "
                        "with a row per model layer, dense layers included, for SGLang's "
                        "--init-expert-location (vLLM reads no placement file: see "
                        "docs/integrations.md)")
    p.add_argument("--dense-layers", default=None,
                   help="with --format sglang: comma-separated model layers without experts "
                        "(default: the all-zero layers of an SGLang logical_count file)")

    p = command("evaluate", "Score a mapping against loads; JSON to stdout (or --out).")
    _loads(p)
    p.add_argument("--phy2log", required=True, help="the mapping [L, P] to score (or a saved plan)")
    p.add_argument("--phy2log-key", help="array name inside the --phy2log file")
    _topology(p, replicas=False, policy_help="whose lower bound to report (default: the policy "
              "of the saved plan given to --phy2log, else auto)")
    p.add_argument("--out", help="write the JSON here instead of stdout")

    p = command("report", "Draw a PNG: GPU load heatmaps before/after, per-layer balancedness.")
    _loads(p)
    _topology(p)
    _planning(p)
    p.add_argument("--png", required=True, help="output PNG path")
    p.add_argument("--size", default="1600x1000", help="pixels, WIDTHxHEIGHT (default 1600x1000)")
    p.add_argument("--title", default=None, help="name shown in the title (default: file name)")

    p = command("bench", "Measure Rebalance latency over N requests (progress on stderr).")
    _loads(p, optional=True)
    _topology(p, defaults={"P": 288, "K": 8, "N": 4, "G": 32})
    p.add_argument("--requests", "-n", type=int, default=100)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--concurrency", "-c", type=int, default=1)
    p.add_argument("--layers", type=int, default=58, help="synthetic loads: layers (default 58)")
    p.add_argument("--experts", type=int, default=256, help="synthetic loads: experts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")

    p = command("replay", "Run a cluster through a trace of windows [T, L, E], re-planning every "
                          "N windows the way vLLM/SGLang do (the reference on the summed windows) "
                          "and the way this service can (history, current mapping kept, movement "
                          "budget); print what each served and moved, draw a PNG timeline.")
    p.add_argument("--trace", required=True,
                   help="[T, L, E] windows, oldest first: .npy, .npz, .safetensors or .json "
                        "(SGLang expert-distribution dumps' \"logical_count\")")
    p.add_argument("--key", help="array name inside the trace file")
    p.add_argument("--interval", type=int, required=True, help="windows between re-plans (N)")
    p.add_argument("--max-moved-slots-per-layer", type=int, default=0,
                   help="the service's movement budget per layer and re-plan (0: unlimited)")
    p.add_argument("--history", type=int, default=8,
                   help="windows the service plans from (default 8)")
    p.add_argument("--objective", choices=["sum", "expected_peak", "recency", "robust", "adaptive"],
                   help="the service's history objective (default: the server's)")
    _topology(p, defaults={"P": 288, "K": 8, "N": 4, "G": 32})
    p.add_argument("--png", help="write the timeline here")
    p.add_argument("--out", help="write per-window figures as JSON here")

    p = command("health", "Print the server's health status; the exit code follows it.")
    p.add_argument("--service", default="", help="service name (default: the whole server)")
    parser.epilog += (f"\n\nexit codes: {EXIT_OK} ok/SERVING, {EXIT_FAIL} failed call or bad "
                      f"input, {EXIT_USAGE} usage, {EXIT_NO_STATUS} health: no status "
                      f"(unreachable), {EXIT_NOT_SERVING} health: not SERVING")
    return parser


def _uses_tls(args) -> bool:
    return bool(args.tls or args.tls_ca or args.tls_cert or args.tls_key)


def explain(e, args) -> str:
    """One line for a failed call: the cause a user can act on first, gRPC's text after it."""
    text = " ".join(str(e).split())
    lower = text.lower()
    detail = text if len(text) <= 240 else text[:237] + "..."
    if getattr(e, "code", None) is not None and e.code.name == "UNAVAILABLE":
        if _uses_tls(args) and ("handshake" in lower or "ssl" in lower or "tls" in lower):
            return ("TLS handshake failed: the server does not speak TLS, or its certificate "
                    "is not trusted (plaintext server: drop --tls/--tls-ca; own CA: --tls-ca "
                    f"FILE) [{detail}]")
        if not _uses_tls(args) and ("socket closed" in lower or "http2" in lower):
            return (f"the server closed the connection: if it serves TLS, add --tls or --tls-ca "
                    f"FILE [{detail}]")
        if "failed to connect" in lower or "connection refused" in lower:
            target = args.target or os.environ.get("EPLB_TARGET") or "localhost:50051"
            return f"no server at {target} (is eplb-server running? check --target) [{detail}]"
    return text


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # gRPC core logs every failed TLS handshake to stderr; the error below says it once.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from . import _commands
    from .errors import EplbError
    from .loaders import LoadError

    try:
        return getattr(_commands, args.command)(args)
    except (EplbError, LoadError) as e:
        if args.command == "health" and isinstance(e, EplbError):
            print(f"health: {explain(e, args)}", file=sys.stderr)
            return EXIT_NO_STATUS
        print(f"eplb-client {args.command}: {explain(e, args)}", file=sys.stderr)
        return EXIT_FAIL
    except BrokenPipeError:
        return EXIT_FAIL


def dump_json(obj, path=None) -> None:
    """Writes JSON to `path` or stdout."""
    text = json.dumps(obj, separators=(",", ":"))
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
