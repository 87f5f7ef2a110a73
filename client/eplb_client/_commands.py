"""The eplb-client subcommands (argparse namespaces in, exit codes out)."""

from __future__ import annotations

import os
import sys

import numpy as np

from . import cli
from .client import EplbClient
from ._request import bound_policy
from .errors import EplbError
from .loaders import LoadError, load_loads, load_mapping, saved_policy


def _client(args) -> EplbClient:
    try:
        return EplbClient(args.target, timeout=args.timeout, root_certificates=args.tls_ca,
                          private_key=args.tls_key, certificate_chain=args.tls_cert,
                          tls=args.tls, tls_server_name=args.tls_server_name)
    except OSError as e:  # an unreadable --tls-* file
        raise EplbError(None, f"cannot read {e.filename}: {e.strerror}") from None
    except ValueError as e:  # a URL as --target, half a client certificate pair
        raise EplbError(None, str(e)) from None


def _topology(args) -> dict:
    return dict(num_replicas=args.num_replicas, num_groups=args.num_groups,
                num_nodes=args.num_nodes, num_gpus=args.num_gpus)


def _planning(args) -> dict:
    if args.slot_loads and not args.current:
        raise LoadError("--slot-loads needs --current")
    current = load_mapping(args.current, args.current_key) if args.current else None
    return dict(policy=args.policy, current_phy2log=current,
                num_logical_experts=args.num_logical_experts, slot_loads=args.slot_loads,
                max_moved_slots_per_layer=args.max_moved_slots_per_layer,
                max_moved_slots_total=args.max_moved_slots_total,
                min_balancedness_gain=args.min_balancedness_gain,
                from_scratch=args.from_scratch, objective=args.objective,
                half_life=args.half_life, robust_k=args.robust_k, model=args.model)


def _summary(r) -> str:
    lines = [f"policy {r.policy}, objective {r.objective}: planned in "
             f"{r.compute_seconds * 1e3:.1f} ms on {r.device or '?'}"]
    for label, s in (("plan", r.plan), ("current", r.current)):
        if s is not None:
            lines.append(f"  {label:8s} balancedness {s.balancedness:.4f}, gap mean "
                         f"{s.mean_gap:.2%} max {s.max_gap:.2%}")
    if r.backtest is not None:
        b = r.backtest
        used = sorted(set(b.layer_forecast), key=b.layer_forecast.count, reverse=True)
        lines.append(f"  backtest ({b.steps} steps): chose {b.chosen} ("
                     + ", ".join(f"{n} {v:.4f}" for n, v in zip(b.candidates, b.balancedness))
                     + "); layers use " + ", ".join(
                         f"{n} {b.layer_forecast.count(n)}" for n in used))
    if r.migration is not None:
        m = r.migration
        lines.append(f"  migration {m.slots_changed} slots changed ({m.cross_node_copies} "
                     f"cross-node) in {int(m.layer_changed.sum())}/{len(m.layer_changed)} layers")
    return "\n".join(lines)


def rebalance(args) -> int:
    loads = load_loads(args.loads, args.key)
    options = _planning(args)
    dense = None
    if args.format == "sglang" or options["current_phy2log"] is not None:
        from .integrations.files import dense_layers, moe_rows

        # A --current written by --format sglang has rows for the dense layers too.
        dense = dense_layers(args.loads, args.key, loads.shape[-2], args.dense_layers)
        if options["current_phy2log"] is not None:
            options["current_phy2log"] = moe_rows(options["current_phy2log"], dense)
    with _client(args) as c:
        r = c.rebalance(loads, **_topology(args), **options)
    if not args.quiet:
        print(_summary(r), file=sys.stderr)
    if args.format == "sglang":
        from .integrations.files import sglang_expert_location

        cli.dump_json(sglang_expert_location(r.phy2log, dense, loads.shape[-1]), args.out)
    else:
        cli.dump_json(r.to_dict(), args.out)
    return cli.EXIT_OK


def evaluate(args) -> int:
    loads = load_loads(args.loads, args.key)
    phy2log = load_mapping(args.phy2log, args.phy2log_key)
    saved = saved_policy(args.phy2log) if args.phy2log_key is None else None
    policy = args.policy or bound_policy(saved, None)  # an explicit --policy wins
    if args.policy is not None:
        why = f"--policy {args.policy}"
    elif policy != "auto":
        why = "the saved plan's policy; --policy to change"
    else:
        why = "--policy auto: hierarchical when groups divide over nodes"
    with _client(args) as c:
        r = c.evaluate(loads, phy2log, num_groups=args.num_groups, num_nodes=args.num_nodes,
                       num_gpus=args.num_gpus, policy=policy)
    print(f"balancedness {r.score.balancedness:.4f}, gap mean {r.score.mean_gap:.2%} max "
          f"{r.score.max_gap:.2%} against the {r.policy} bound ({why})", file=sys.stderr)
    cli.dump_json(r.to_dict(), args.out)
    return cli.EXIT_OK


def report(args) -> int:
    from .report import make_report

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise LoadError(f"--size must be WIDTHxHEIGHT, got {args.size!r}") from None
    loads = load_loads(args.loads, args.key)
    options = _planning(args)
    name = args.title if args.title is not None else os.path.basename(args.loads)
    with _client(args) as c:
        s = make_report(c, loads, args.png, **_topology(args), name=name,
                        size=(width, height), **options)
    print(f"wrote {args.png}: balancedness {s['balancedness_before']:.4f} ({s['before']}) -> "
          f"{s['balancedness_after']:.4f} ({s['policy']}), bound {s['balancedness_bound']:.4f}",
          file=sys.stderr)
    return cli.EXIT_OK


def bench(args) -> int:
    from . import bench as b
    from ._request import rebalance_request

    if args.loads:
        loads = load_loads(args.loads, args.key)
    else:
        loads = b.synthetic_loads(args.layers, args.experts, args.seed)
    req = rebalance_request(loads, **_topology(args), policy=args.policy, model="eplb-client bench")
    with _client(args) as c:
        stats = b.run(c, req, requests=args.requests, warmup=args.warmup,
                      concurrency=args.concurrency, progress=not args.no_progress)
    lat, comp = stats["latency_ms"], stats["server_compute_ms"]
    print(f"{stats['requests']} requests, concurrency {stats['concurrency']}, "
          f"{stats['throughput_rps']:.1f}/s on {stats['device'] or '?'}: latency p50 "
          f"{lat['p50']:.2f} p90 {lat['p90']:.2f} p99 {lat['p99']:.2f} max {lat['max']:.2f} ms "
          f"(server compute p50 {comp['p50']:.2f} ms)", file=sys.stderr)
    cli.dump_json({"shape": list(loads.shape), **_topology(args), "policy": args.policy, **stats})
    return cli.EXIT_OK


def replay(args) -> int:
    from . import replay as rp
    from .report import aggregate_bound

    trace = load_loads(args.trace, args.key)
    if trace.ndim != 3:
        raise LoadError(f"{args.trace}: a trace must be [windows, layers, experts]; got shape "
                        f"{list(trace.shape)}")
    if not 1 <= args.interval < trace.shape[0]:
        raise LoadError(f"--interval must be in [1, {trace.shape[0] - 1}] for a trace of "
                        f"{trace.shape[0]} windows")
    if args.history < 1:
        raise LoadError("--history must be at least 1")
    topo = _topology(args)
    budget = (f", at most {args.max_moved_slots_per_layer} slots per layer"
              if args.max_moved_slots_per_layer else "")
    names = ("reference on the summed windows (vLLM/SGLang)",
             f"service: history of {args.history}, mapping kept{budget}")
    with _client(args) as c:
        def reference(seen, current):
            return c.rebalance(seen[-args.interval:].sum(0), **topo, policy="deepseek",
                               model="eplb-client replay").phy2log

        def service(seen, current):
            return c.rebalance(seen[-args.history:], **topo, policy=args.policy,
                               current_phy2log=current, objective=args.objective,
                               max_moved_slots_per_layer=args.max_moved_slots_per_layer,
                               model="eplb-client replay").phy2log

        runs = rp.replay(trace, args.interval, dict(zip(names, (reference, service))),
                         args.num_gpus)
        bound = np.full(trace.shape[0], np.nan)
        # Any mapping gets the window's lower bound back; a plan on the window itself reaches it.
        anyone = np.tile(np.arange(topo["num_replicas"]) % trace.shape[2], (trace.shape[1], 1))
        for t in np.flatnonzero(runs[names[1]].served_by >= 0):
            bound[t] = aggregate_bound(c.evaluate(
                trace[t], anyone, num_groups=args.num_groups, num_nodes=args.num_nodes,
                num_gpus=args.num_gpus, policy=args.policy).score)
    print(f"{args.trace}: {trace.shape[0]} windows of {trace.shape[1]}x{trace.shape[2]}, "
          f"re-planned every {args.interval}; {topo['num_replicas']} slots on "
          f"{topo['num_gpus']} GPUs")
    print("\n".join(rp.summary_lines(runs, bound)))
    if args.png:
        rp.render_timeline(args.png, runs, f"{os.path.basename(args.trace)}: re-plan every "
                           f"{args.interval} windows", bound)
        print(f"wrote {args.png}", file=sys.stderr)
    if args.out:
        cli.dump_json({"interval": args.interval, "bound": [None if np.isnan(b) else b
                                                            for b in bound.tolist()],
                       "policies": {r.name: {
                           "balancedness": [None if np.isnan(b) else b
                                            for b in r.balancedness.tolist()],
                           "mean_balancedness": r.mean_balancedness,
                           "moved": r.moved, "mean_moved": r.mean_moved}
                           for r in runs.values()}}, args.out)
    return cli.EXIT_OK


def health(args) -> int:
    with _client(args) as c:
        status = c.health(args.service)
    print(status)
    return cli.EXIT_OK if status == "SERVING" else cli.EXIT_NOT_SERVING
