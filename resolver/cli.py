"""The `classguard` command line (SPEC §3): errors in one line on stderr, exit 1."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from blocklists.bundled import load_bundled
from blocklists.names import normalize_domain
from blocklists.update import UpdateError, load_compiled, update_lists
from policies.engine import PolicyEngine
from policies.loader import PolicyError, load_policy
from resolver.clients import ClientIndex
from resolver.config import ConfigError, load_config
from resolver.service import StartupError, known_categories, own_names, read_policy

log = logging.getLogger("classguard")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS,
                        help="configuration file (default: ./classguard.yaml when present, else embedded defaults)")
    parser = argparse.ArgumentParser(prog="classguard", parents=[common],
                                     description="DNS content filtering for schools and homes")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="run the resolver")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the DNS port")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    check = commands.add_parser("check", parents=[common], help="explain the decision for a name")
    check.add_argument("name")
    who = check.add_mutually_exclusive_group(required=True)
    who.add_argument("--class", dest="class_id", metavar="ID")
    who.add_argument("--client", metavar="IP")
    who.add_argument("--device", metavar="ID")
    check.add_argument("--at", metavar="ISO-8601", help="the moment to decide for (default: now)")
    check.add_argument("--home", action="store_true", help="decide for the home scope")

    policy = commands.add_parser("policy", parents=[common], help="policy files")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    validate = policy_commands.add_parser("validate", parents=[common], help="check a policy file")
    validate.add_argument("file", type=Path)

    lists = commands.add_parser("lists", parents=[common], help="blocklists")
    lists_commands = lists.add_subparsers(dest="lists_command", required=True)
    lists_commands.add_parser("update", parents=[common], help="download and compile the blocklists now")
    lists_commands.add_parser("status", parents=[common],
                              help="entries, age, last success and last error per source and category")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config_path = getattr(args, "config", None) or os.environ.get("CLASSGUARD_CONFIG") or None
        config = load_config(Path(config_path) if config_path else None)
        if args.command == "serve":
            return _serve(config, args)
        if args.command == "check":
            return _check(config, args)
        if args.command == "policy":
            return _policy_validate(config, args)
        if args.command == "lists":
            return _lists_status(config) if args.lists_command == "status" else _lists_update(config)
    except (ConfigError, StartupError, UpdateError) as exc:
        print(f"classguard: {exc}", file=sys.stderr)
        return 1
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 1


def _serve(config, args) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers != 1:
        raise StartupError("--workers above 1 is not available yet; run one process per port for now")
    from resolver.service import run

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; its absence only costs speed
        asyncio.run(run(config))
    else:
        uvloop.run(run(config))
    return 0


def _policy_validate(config, args) -> int:
    bundled = load_bundled()
    load_policy(args.file, known_categories=known_categories(config, bundled), known_services=set(bundled.services))
    print(f"{args.file}: ok")
    return 0


def _lists_update(config) -> int:
    from blocklists.update import TerminalProgress

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() else None
    try:
        lists, report = asyncio.run(update_lists(config, load_bundled(), progress=progress))
    finally:
        if progress is not None:
            progress.close()
    print(report.table())
    return 0 if not report.failed and not report.kept_previous else 1


def _lists_status(config) -> int:
    from blocklists.update import read_status

    report = read_status(config.state_dir)
    if report is None:
        raise StartupError(f"no list refresh recorded under {config.state_dir} yet; "
                           "run `classguard lists update` or start the server")
    print(report.status_table())
    return 0


def _check(config, args) -> int:
    bundled = load_bundled()
    policy = read_policy(config, bundled)
    scope = "home" if args.home else "school"
    if args.class_id:
        class_id, how = args.class_id, "--class"
        if class_id not in policy.classes:
            raise StartupError(f"no class {class_id!r} in the policy")
    elif args.device:
        device = policy.devices.get(args.device)
        if device is None:
            raise StartupError(f"no device {args.device!r} in the policy")
        class_id, how = device.class_id, f"device {device.id}"
    else:
        client = ClientIndex(policy, config.dns.unknown_clients).identify(args.client)
        if client is None:
            print(f"{args.name}\n  client {args.client}: unknown client\n  decision: refused (REFUSED, EDE 18 Prohibited)\n"
                  f"  rule: dns.unknown_clients: {config.dns.unknown_clients}")
            return 0
        class_id, how = client.class_id, client.matched_by
    name = normalize_domain(args.name)
    if name is None:
        raise StartupError(f"{args.name!r} is not a valid domain name")
    lists = load_compiled(config.state_dir)
    if lists is None:
        print("note: no compiled lists under state_dir yet; compiling them now", file=sys.stderr)
        lists, _report = asyncio.run(update_lists(config, bundled))
    engine = PolicyEngine(policy, lists, bundled, own_names(config), check_overrides(config),
                          config.timezone)
    at = _moment(args.at, config.timezone)
    class_state = engine.class_state(class_id, scope, at)
    decision = engine.decide_in(class_state, name)
    print(name)
    print(f"  class: {class_id} ({how}), scope {scope}")
    print(f"  at: {dt.datetime.fromtimestamp(at, ZoneInfo(config.timezone)).isoformat(timespec='minutes')}"
          f" ({config.timezone})")
    print(f"  decision: {decision.action.value}")
    print(f"  step: {decision.step}")
    print(f"  rule: {decision.rule}")
    if decision.reason:
        print(f"  EDE text: {decision.reason}")
    if class_state.closed:
        print(f"  in force: {class_state.closed_rule}")
    if class_state.timed and class_state.valid_until != float("inf"):
        until = dt.datetime.fromtimestamp(class_state.valid_until, ZoneInfo(config.timezone))
        print(f"  until: {until.isoformat(timespec='minutes')} (next schedule boundary or override end)")
    return 0


def _moment(text: str | None, timezone: str) -> float:
    """`--at` as a POSIX time; a time without an offset is local time in the config's timezone."""
    if not text:
        return time.time()
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise StartupError(f"--at {text!r}: write an ISO-8601 time, e.g. 2026-12-01T21:30") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(timezone))
    return moment.timestamp()


def check_overrides(config) -> tuple:
    """The teachers' overrides the store holds, for `check` (none before the store exists)."""
    return ()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
