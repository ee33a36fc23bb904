"""The `classguard` command line (SPEC §3): errors in one line on stderr, exit 1."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import dataclasses
import datetime as dt
import getpass
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from admin.control import local_commands, os_user
from admin.control import request as control_request
from admin.control import stored_or_seed_policy
from admin.backup import backup as backup_store
from admin.backup import counts_of, read_backup, write_backup
from admin.backup import describe as describe_backup
from admin.backup import empty as backup_empty
from admin.backup import holds as store_holds
from admin.backup import restore as restore_store
from admin.devices import COMMANDS as DEVICE_COMMANDS
from admin.devices import holds_devices
from admin.errors import ControlError, NeedsForce, NoAnswer
from blocklists.bundled import load_bundled
from blocklists.names import normalize_domain
from blocklists.update import (
    TerminalProgress, UpdateReport, artifact_path, load_compiled, read_status,
    update_lists,
)
from classguard import device_cli
from classguard.config import ConfigError, json_schema, load_config
from classguard.logsetup import configure
from classguard.metric_shares import clear_shares
from classguard.service import fetch_missing_lists, known_categories
from classguard.service import open_store as service_store
from classguard.service import (
    check_ports, make_upstreams, own_names, policy_path, publish_lists, run,
)
from classguard.version import build_info
from classguard.workers import supervise
from common.errors import ClassguardError, StartupError
from dashboard import auth
from policies.export import export_devices, export_policy
from policies.loader import PolicyError, load_policy
from policies.yaml_lines import YamlError
from privacy import gdpr
from privacy.querylog import QueryLogSettings
from resolver.build import build_chain
from resolver.chain import Client
from resolver.explain import Verdict, explain
from resolver.state import RuntimeState
from store.protocol import Store
from store.records import StoreError, StoreUnavailable, describe_user

log = logging.getLogger("classguard")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS,
                        help="configuration file (default: ./classguard.yaml when present, else embedded defaults)")
    parser = argparse.ArgumentParser(prog="classguard", parents=[common],
                                     description="DNS content filtering for schools and homes")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="version, commit, Python, event loop and hot path; then exit")
    commands = parser.add_subparsers(dest="command", required=True)

    config = commands.add_parser("config", parents=[common], help="the configuration file")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    config_commands.add_parser("validate", parents=[common],
                               help="check the configuration (and the environment's overrides)")
    config_commands.add_parser("schema", parents=[common],
                               help="print the configuration's JSON Schema (docs/classguard.schema.json)")

    serve = commands.add_parser("serve", parents=[common], help="run the resolver")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the DNS port")
    serve.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                       help="default: logging.level in the config, else info")
    serve.add_argument("--log-format", default=None, choices=["text", "json"],
                       help="one line per event, as text or JSON (default: logging.format, else text)")

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
    import_ = policy_commands.add_parser("import", parents=[common],
                                         help="replace the stored policy from a file (validated first)")
    import_.add_argument("file", type=Path)
    import_.add_argument("--dry-run", action="store_true",
                         help="print what would change, change nothing")
    import_.add_argument("--force", action="store_true",
                         help="confirm an import that removes devices or a class with devices")
    diff = policy_commands.add_parser("diff", parents=[common],
                                      help="print what importing a file would change (nothing is changed)")
    diff.add_argument("file", type=Path)
    policy_commands.add_parser("export", parents=[common], help="print the stored policy as YAML")

    override = commands.add_parser("override", parents=[common],
                                   help="a teacher's pause or temporary allow, for N minutes")
    override_commands = override.add_subparsers(dest="override_command", required=True)
    pause = override_commands.add_parser("pause", parents=[common], help="pause a class now")
    pause.add_argument("class_id", metavar="CLASS")
    pause.add_argument("--minutes", type=int, required=True, help="1 to 1440")
    allow = override_commands.add_parser("allow", parents=[common],
                                         help="allow a domain or a bundled service for a class")
    allow.add_argument("class_id", metavar="CLASS")
    allow.add_argument("name", metavar="NAME", help="a domain name or a bundled service id")
    allow.add_argument("--minutes", type=int, required=True, help="1 to 1440")
    override_commands.add_parser("list", parents=[common], help="the overrides in force")
    cancel = override_commands.add_parser("cancel", parents=[common], help="end an override now")
    cancel.add_argument("id", metavar="ID")

    lists = commands.add_parser("lists", parents=[common], help="blocklists")
    lists_commands = lists.add_subparsers(dest="lists_command", required=True)
    lists_commands.add_parser("update", parents=[common], help="download and compile the blocklists now")
    lists_commands.add_parser("status", parents=[common],
                              help="entries, age, last success and last error per source and category")
    device = commands.add_parser("device", parents=[common], help="a device's data (GDPR)")
    device_commands = device.add_subparsers(dest="device_command", required=True)
    for name, text in (("data", "print everything held about a device, as JSON"),
                       ("erase", "delete everything held about a device")):
        command = device_commands.add_parser(name, parents=[common], help=text)
        command.add_argument("id", metavar="ID",
                             help="a device id, or the address of a client known by its network")
    device_cli.add_parser(commands, common)  # device add, import, export-urls, rotate, revoke
    _add_account_parsers(commands, common)  # user add, user reset, token create, token revoke
    return parser


def _add_account_parsers(commands, common) -> None:
    user = commands.add_parser("user", parents=[common], help="dashboard users")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    add = user_commands.add_parser("add", parents=[common], help="create a dashboard user")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["admin", "teacher"])
    add.add_argument("--class", dest="classes", action="append", default=[], metavar="ID",
                     help="a class the teacher runs (repeat for several)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    reset = user_commands.add_parser("reset", parents=[common], help="set a user's password")
    reset.add_argument("name")
    reset.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    user_commands.add_parser("list", parents=[common], help="the dashboard users and their roles")
    token = commands.add_parser("token", parents=[common], help="REST API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", parents=[common],
                                       help="print a new API token (admin scope)")
    create.add_argument("name", help="what the token is for, as the audit log names it")
    revoke = token_commands.add_parser("revoke", parents=[common], help="revoke a token by its id")
    revoke.add_argument("id")
    token_commands.add_parser("list", parents=[common],
                              help="the tokens: id, name, when and by whom made, revoked or not")
    store = commands.add_parser("store", parents=[common], help="backup and restore of the whole state")
    store_commands = store.add_subparsers(dest="store_command", required=True)
    backup = store_commands.add_parser(
        "backup", parents=[common], help="write the whole state (policy, devices, users, tokens, "
        "overrides, today's screen time, audit log) to a new owner-only FILE")
    backup.add_argument("file", type=Path)
    restore = store_commands.add_parser(
        "restore", parents=[common], help="make the store hold what a backup FILE holds")
    restore.add_argument("file", type=Path)
    restore.add_argument("--force", action="store_true",
                         help="confirm replacing what a store that is not empty holds")


class _Version(argparse.Action):
    """`classguard --version`: what is running, found only when asked (it may ask git)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(build_info().line())
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config_path = getattr(args, "config", None) or os.environ.get("CLASSGUARD_CONFIG") or None
        if args.command == "config":
            return _config(args, Path(config_path) if config_path else None)
        config = load_config(Path(config_path) if config_path else None)
        if args.command == "serve":
            return _serve(config, args)
        if args.command == "check":
            return _check(config, args)
        if args.command == "policy":
            return _POLICY_COMMANDS[args.policy_command](config, args)
        if args.command == "override":
            return _override(config, args)
        if args.command == "device" and args.device_command in DEVICE_COMMANDS:
            return device_cli.run(config, args, _state_request)
        if args.command == "device":
            return _DEVICE_COMMANDS[args.device_command](config, args)
        if args.command in ("user", "token"):
            return _accounts(config, args)
        if args.command == "store":
            return _store_backup(config, args) if args.store_command == "backup" \
                else _store_restore(config, args)
        if args.command == "lists":
            return _lists_status(config) if args.lists_command == "status" else _lists_update(config)
    except ClassguardError as exc:
        print(error_line(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 1


def _config(args, path: Path | None) -> int:
    """`config validate`: `FILE: ok`, or each mistake as `FILE:LINE: message` (exit 1);
    `config schema`: the JSON Schema made from the same definitions the check uses."""
    if args.config_command == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    if path is not None and not path.is_file():
        raise StartupError(f"{path}: no such configuration file")
    try:
        config = load_config(path)
    except ConfigError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
    print(f"{config.path or 'the embedded defaults'}: ok")
    return 0


def error_line(exc: ClassguardError) -> str:
    """The one line on stderr for any error classguard raises on purpose (exit code 1)."""
    if isinstance(exc, (PolicyError, YamlError)):
        return str(exc)  # FILE:LINE: message, as an editor jumps to it
    if isinstance(exc, StoreUnavailable):
        return (f"classguard: {str(exc).rstrip('.')}; the configuration's `store:` names this "
                "Redis: is it running and reachable from here?")
    return f"classguard: {exc}"


def _serve(config, args) -> int:

    configure(config, args.log_level, args.log_format)
    if args.workers < 1:
        raise StartupError("--workers takes a number of processes, 1 or more")

    check_ports(config, reuse_port=args.workers > 1)  # a busy port: one line, nothing written
    clear_shares(config.state_dir)  # once per start, before the workers: never a worker's restart
    if args.workers > 1:

        return supervise(config, args.workers, _run_worker)
    return _run_worker(config, 0, 1)


def _run_worker(config, index: int, workers: int) -> int:

    try:
        import uvloop  # lazy: optional, and a faster loop is for serving only
    except ImportError:  # pragma: no cover - uvloop is a dependency; its absence only costs speed
        asyncio.run(run(config, index, workers))
    else:
        uvloop.run(run(config, index, workers))
    return 0


def _read_password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")

    password = getpass.getpass("password: ")
    if getpass.getpass("again: ") != password:
        raise StartupError("the two passwords differ")
    return password


def _accounts(config, args) -> int:
    """`user add|reset`, `token create|revoke`: written to the store, audited."""
    async def run() -> str:
        store = open_store(config)
        try:
            actor = os_user()
            if args.command == "token" and args.token_command == "create":
                text, record = await auth.create_token(store, args.name, actor=actor)
                return text
            if args.command == "token" and args.token_command == "list":
                rows = ["id\tname\tcreated\tby\tstate"] + [
                    f"{item.id}\t{item.name}\t{_local(item.created_at, config.timezone)}\t"
                    f"{item.created_by}\t{'revoked' if item.revoked else 'in force'}"
                    for item in sorted(await store.tokens(), key=lambda item: item.created_at)]
                return "\n".join(rows)
            if args.command == "user" and args.user_command == "list":
                return "\n".join(["name\trole\tclasses"] + [
                    f"{item.name}\t{item.role}\t{', '.join(item.classes) or '-'}"
                    + ("\tdisabled" if item.disabled else "")
                    for item in sorted(await store.users(), key=lambda item: item.name)])
            if args.command == "token":
                record = await auth.revoke_token(store, args.id, actor=actor)
                return f"token {record.id} ({record.name}) revoked"
            existing = await store.get_user(args.name)
            if args.user_command == "add":
                if existing is not None:
                    raise StartupError(f"user {args.name!r} exists already; "
                                       "`classguard user reset` sets a new password")
                user = auth.make_user(args.name, args.role, args.classes, _read_password(args),
                                      known_classes=known_classes)
                await store.put_user(user, actor=actor, action="user.add")
                return f"user {user.name} added ({user.role})"
            if existing is None:
                raise StartupError(f"no user {args.name!r}")
            password = _read_password(args)
            auth.check_password_rules(password)
            user = dataclasses.replace(existing, password_hash=auth.hash_password(password),
                                       sessions_after=time.time())  # logs it out everywhere
            await store.put_user(user, actor=actor, action="user.reset",
                                 before=describe_user(existing))
            return f"user {user.name}: password set"
        except auth.AccountError as exc:  # the shared rule's words, with the option to use
            if exc.key == "teacher_needs_class":
                raise StartupError("a teacher needs at least one --class") from None
            hint = f" (classes: {', '.join(known_classes) or 'none'})" \
                if exc.key == "no_class" and known_classes is not None else ""
            raise StartupError(str(exc) + hint) from None
        except auth.AuthError as exc:
            raise StartupError(str(exc)) from None
        finally:
            await store.close()

    # the classes a teacher may be given: the stored policy's (checked by auth.make_user, as the
    # API and the pages check theirs)
    known_classes = tuple(_stored_policy(config, load_bundled()).classes) \
        if args.command == "user" and args.user_command == "add" and args.classes else None
    print(asyncio.run(run()))
    return 0


def _device_data(config, args) -> int:
    """Everything held about one device (query log entries, stats, its stored record), as JSON."""
    async def report() -> dict:
        store = service_store(config)
        try:
            return await gdpr.device_report(store, QueryLogSettings.from_section(config.query_log),
                                            args.id)
        finally:
            await store.close()

    print(json.dumps(asyncio.run(report()), indent=1, ensure_ascii=False))
    return 0


def _device_erase(config, args) -> int:
    # Through the running server when there is one (SPEC §3): it writes what it buffers first,
    # and every server on the store drops what it buffers of the device (privacy.gdpr).
    erased = _state_request(config, {"op": "device.erase", "id": args.id})
    store = erased.get("store") or {}
    extra = ""
    if store.get("device_record"):
        extra += "; its record removed from the policy"
    if store.get("screen_time_days"):
        extra += f"; its screen-time minutes of {store['screen_time_days']} day(s) erased"
    print(f"device {args.id}: {erased['query_log_entries']} query log entries erased{extra}")
    return 0


_DEVICE_COMMANDS = {"data": _device_data, "erase": _device_erase}


def _policy_validate(config, args) -> int:
    bundled = load_bundled()
    load_policy(args.file, known_categories=known_categories(config, bundled), known_services=set(bundled.services),
                allow_open=config.dns.allow_open)
    print(f"{args.file}: ok")
    return 0


LISTS_UPDATE_TIMEOUT = 3600.0  # seconds a server may take to download and compile (UT1 is large)


def _lists_update(config) -> int:
    """A server running on this state_dir makes the refresh itself (it serves the new lists at
    once and, with Redis, publishes them); otherwise this process compiles them and, with Redis,
    publishes them, and every instance on that Redis loads them."""

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    response = asyncio.run(control_request(config.state_dir, {"op": "lists.refresh"},
                                           timeout=LISTS_UPDATE_TIMEOUT))
    if response is not None and response.get("ok"):
        report = UpdateReport.from_json(response["report"])
        print(f"the server running on {config.state_dir} refreshed its lists", file=sys.stderr)
    elif response is not None and not str(response.get("error")).startswith(
            ("unknown op", "this worker does not")):  # else: compiled here, as with no server
        raise ControlError(str(response.get("error")))
    else:
        progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() else None
        try:
            lists, report = asyncio.run(update_lists(config.blocklists, config.state_dir, load_bundled(), progress=progress))
        finally:
            if progress is not None:
                progress.close()
        del lists
        if config.store != "embedded":
            from store.redis_backend import artifact_sha256  # lazy: it loads redis

            digest = artifact_sha256(artifact_path(config.state_dir))
            if _with_store(config, lambda store: publish_lists(store, config.state_dir, digest)):
                print(f"lists published {device_cli.store_place(config)}: every instance on it "
                      "loads them", file=sys.stderr)
    print(report.table())
    return 0 if not report.failed and not report.kept_previous else 1


def _lists_status(config) -> int:

    report = read_status(config.state_dir)
    if report is None:
        raise StartupError(f"no list refresh recorded under {config.state_dir} yet; "
                           "run `classguard lists update` or start the server")
    print(report.status_table())
    return 0


def _check(config, args) -> int:
    """The server's answer explained: the question goes through the chain the server builds
    (resolver.explain), on the state the servers on this store run, screen time included."""
    config = _read_only_state(config)
    bundled = load_bundled()
    policy = _stored_policy(config, bundled)
    scope = "home" if args.home else "school"
    name = normalize_domain(args.name)
    if name is None:
        raise StartupError(f"{args.name!r} is not a valid domain name")
    if args.class_id and args.class_id not in policy.classes:
        raise StartupError(f"no class {args.class_id!r} in the policy")
    if args.device and args.device not in policy.devices:
        raise StartupError(f"no device {args.device!r} in the policy")
    _with_store(config, lambda store: fetch_missing_lists(store, config.state_dir))
    lists = load_compiled(config.state_dir)
    if lists is None:
        print("note: no compiled lists under state_dir yet; compiling them now", file=sys.stderr)
        lists, _report = asyncio.run(update_lists(config.blocklists, config.state_dir, bundled))
    at = _moment(args.at, config.timezone)
    state = RuntimeState(policy, lists, bundled, config.dns.unknown_clients, own_names(config),
                         check_overrides(config), config.timezone, clock=lambda: at)
    client = None
    if args.class_id:
        client = Client(args.class_id, None, scope, "--class")
    elif args.device:
        device = policy.devices[args.device]
        client = Client(device.class_id, device.id, scope, f"device {device.id}")
    elif args.home:  # a school's address seen at home: the same class, the home rules
        found = state.clients.identify(args.client)
        if found is not None:
            client = dataclasses.replace(found, scope="home")

    async def ask() -> Verdict:
        store = open_store(config)
        upstreams, zones = make_upstreams(config)
        try:
            state.screen_time.store = store  # the minutes the servers wrote, as a server starts
            await state.screen_time.load(at)
            head = build_chain(config.dns, state, upstreams, zones)
            return await explain(head, state, name, client_ip=args.client or "", client=client, at=at)
        finally:
            for group in (upstreams, *zones.values()):
                for upstream in group.upstreams:
                    await upstream.close()
            await store.close()

    verdict = asyncio.run(ask())
    print(name)
    if verdict.client is None:
        print(f"  client {args.client}: unknown client\n  decision: refused (REFUSED, EDE 18 Prohibited)\n"
              f"  rule: dns.unknown_clients: {config.dns.unknown_clients}")
        return 0
    asker = verdict.client
    print(f"  class: {asker.class_id} ({asker.matched_by}), scope {asker.scope}"
          + (f", device {asker.device_id}" if asker.device_id and args.client else ""))
    print(f"  at: {dt.datetime.fromtimestamp(at, ZoneInfo(config.timezone)).isoformat(timespec='minutes')}"
          f" ({config.timezone})")
    print(f"  decision: {verdict.action}")
    decision = verdict.decision
    if decision is not None:
        print(f"  step: {decision.step}")
        print(f"  rule: {decision.rule}")
    if verdict.result == "blocked" and verdict.reason:
        print(f"  EDE text: {verdict.reason}")
    if verdict.result == "servfail":
        print("  answer inspection: not done (no upstream answered)")
    if verdict.in_force:
        print(f"  in force: {verdict.in_force}")
    if verdict.until is not None:
        until = dt.datetime.fromtimestamp(verdict.until, ZoneInfo(config.timezone))
        print(f"  until: {until.isoformat(timespec='minutes')} (next schedule boundary or override end)")
    return 0


def _read_only_state(config):
    """For a command that only reads: a state_dir that does not exist is not made; a temporary
    one stands in (its lists compiled there if needed), removed when the command ends."""
    if Path(config.state_dir).exists():
        return config
    temporary = tempfile.TemporaryDirectory(prefix="classguard-check-")
    atexit.register(temporary.cleanup)
    return dataclasses.replace(config, state_dir=Path(temporary.name))


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
    return tuple(_with_store(config, lambda store: store.overrides()))


# --- the configured store, and changes through a running server when there is one ------------


def open_store(config) -> Store:
    """The store the config names (SPEC §7): files under state_dir, or Redis. Every command
    reads and writes this one, so that a Redis-backed deployment sees what the CLI did."""

    if config.store != "embedded":
        # The CLI says a failure itself, in one line; the store's own log line (with its
        # "serving the last snapshot") is meant for servers.
        logging.getLogger("classguard.store.redis").setLevel(logging.CRITICAL)
    return service_store(config)


def _with_store(config, use):
    """`use(store)` on the configured store, run to its end; the store closed after."""
    async def run():
        store = open_store(config)
        try:
            return await use(store)
        finally:
            await store.close()
    return asyncio.run(run())


def _screen_days(config) -> tuple[str, ...]:
    today = dt.datetime.now(ZoneInfo(config.timezone)).date()
    return (today.isoformat(), (today - dt.timedelta(days=1)).isoformat())


def _store_backup(config, args) -> int:
    data = _with_store(config, lambda store: backup_store(store, days=_screen_days(config)))
    write_backup(args.file, json.dumps(data, ensure_ascii=False, indent=1) + "\n")
    print(f"{args.file}: backup of {describe_backup(counts_of(data))}, "
          f"{len(data['audit'])} audit entries (owner-only; it holds password and token hashes)")
    return 0


def _store_restore(config, args) -> int:
    try:
        data = json.loads(args.file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ControlError(f"{args.file}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise ControlError(f"{args.file}: not JSON ({exc}); nothing was changed") from None
    data = read_backup(data, str(args.file))

    async def run(store):
        held = await store_holds(store)
        if not backup_empty(held) and not args.force:
            raise ControlError(
                f"the store {device_cli.store_place(config)} is not empty: restoring {args.file} "
                f"replaces what it holds ({describe_backup(held)}) with the backup's "
                f"({describe_backup(counts_of(data))}); confirm with --force (nothing was changed)")
        return held, await restore_store(store, data, actor=os_user())

    held, restored = _with_store(config, run)
    print(f"{args.file}: restored {describe_backup(restored)}, {restored['audit entries']} audit "
          f"entries added" + (f" (replacing {describe_backup(held)})" if not backup_empty(held) else "")
          + "; a server running on this store applies it within a second")
    return 0


def _stored_policy(config, bundled):
    """The policy the servers on this store run: the stored one, else the seed file's."""
    return _with_store(config, lambda store: stored_or_seed_policy(
        store, seed=policy_path(config), known_categories=known_categories(config, bundled),
        known_services=set(bundled.services), allow_open=config.dns.allow_open))


async def _store_version(config) -> int | None:
    """The store's version (it moves on every change), or None when it cannot be read."""
    store = open_store(config)
    try:
        return await store.version()
    except StoreError:
        return None
    finally:
        await store.close()


async def _what_happened(config, before: int | None) -> str:
    """After a server took a change and stopped without answering: what the store says of it."""
    after = await _store_version(config)
    if before is not None and after == before:
        return f"nothing was changed (the store is still at version {before}): run the command again"
    return ("the change may have been made (the store moved from version "
            f"{before if before is not None else '?'} to {after if after is not None else '?'}): "
            "look before running it again (`classguard device list`, the audit log)")


def _state_request(config, request: dict) -> dict:
    """Send a change to the server running on config.state_dir (SPEC §3), or, when none runs,
    make it in the configured store directly (under the embedded store's lock, or by Redis's
    atomic scripts: the servers on that Redis apply it within a second)."""
    bundled = load_bundled()

    async def send() -> dict:
        before = await _store_version(config)
        try:
            response = await control_request(config.state_dir, request)
        except NoAnswer as exc:
            raise ControlError(f"{exc}; {await _what_happened(config, before)}") from None
        if response is None:
            store = open_store(config)
            try:
                try:  # locked categories are checked against the lists the instances serve
                    await fetch_missing_lists(store, config.state_dir)
                except StoreUnavailable:
                    raise
                except StoreError:
                    pass  # checked against what state_dir holds, as without Redis
                commands = local_commands(
                    store, bundled=bundled, known_categories=known_categories(config, bundled),
                    known_services=set(bundled.services), seed=policy_path(config),
                    load_lists=lambda: load_compiled(config.state_dir),
                    allow_open=config.dns.allow_open)
                response = await commands.handle(request, os_user())
            finally:
                await store.close()
        return response

    response = asyncio.run(send())
    if not response.get("ok"):
        if response.get("needs_force"):
            raise NeedsForce(str(response.get("error")), list(response.get("diff") or []))
        if response.get("errors"):
            raise PolicyError([str(error) for error in response["errors"]])
        raise ControlError(str(response.get("error") or "refused"))
    return response


def _print_diff(file: Path, response: dict) -> None:
    lines = response.get("diff") or []
    against = f"the stored policy (version {response['version']})" if response.get("version") \
        else "an empty store"
    if not lines:
        print(f"{file}: no change against {against}")
        return
    print(f"{file} against {against}: {len(lines)} change{'s' if len(lines) > 1 else ''}")
    for line in lines:
        print(f"  {line}")


def _policy_diff(config, args) -> int:
    """What `policy import FILE` would change; nothing is changed."""
    bundled = load_bundled()
    policy = load_policy(args.file, known_categories=known_categories(config, bundled),
                         known_services=set(bundled.services), allow_open=config.dns.allow_open)
    response = _state_request(config, {"op": "policy.diff", "text": export_policy(policy),
                                       "source": str(args.file)})
    _print_diff(args.file, response)
    if getattr(args, "dry_run", False):
        print("dry run: nothing was changed" + (
            f"; importing removes {' and '.join(response['removals'])} and needs --force"
            if response.get("removals") else ""))
    return 0


def _policy_import(config, args) -> int:
    if args.dry_run:
        return _policy_diff(config, args)
    bundled = load_bundled()
    policy = load_policy(args.file, known_categories=known_categories(config, bundled),
                         known_services=set(bundled.services), allow_open=config.dns.allow_open)
    request = {"op": "policy.put", "text": export_policy(policy), "source": str(args.file),
               "force": bool(args.force)}
    try:
        response = _state_request(config, request)
    except NeedsForce as exc:
        _print_diff(args.file, {"diff": exc.diff, "version": 1})
        raise
    version = response["version"]
    if not response["changed"]:
        print(f"{args.file}: unchanged, the stored policy is version {version}")
        return 0
    for line in response.get("diff") or []:
        print(f"  {line}")
    if response["via"] == "server":
        print(f"{args.file}: imported as policy version {version}; the running server applied it")
    elif config.store != "embedded":
        print(f"{args.file}: imported as policy version {version} {device_cli.store_place(config)}; "
              "every server on it applies it within a second")
    else:
        print(f"{args.file}: imported as policy version {version}; no server runs on "
              f"{config.state_dir}, the next one to start uses it")
    return 0


def _policy_export(config, args) -> int:
    """The stored policy and, in its `devices:` section, the enrolled devices (their token
    digests, never a token): `policy import` of this file gives the same policy and devices."""
    async def read(store):
        stored = await store.get_policy()
        return stored, (await store.devices())[0] if stored is not None else []

    stored, devices = _with_store(config, read)
    if stored is not None:
        text = stored.text if holds_devices(stored.text) or not devices else \
            ("" if stored.text.strip() == "{}" else stored.text) + export_devices(devices)
        sys.stdout.write(text)
        return 0
    bundled = load_bundled()
    seed = policy_path(config)
    policy = load_policy(seed, known_categories=known_categories(config, bundled),
                         known_services=set(bundled.services), allow_open=config.dns.allow_open)
    print(f"note: nothing is stored {device_cli.store_place(config)} yet; this is the seed file "
          f"{seed}", file=sys.stderr)
    sys.stdout.write(export_policy(policy))
    return 0


_POLICY_COMMANDS = {"validate": _policy_validate, "import": _policy_import, "diff": _policy_diff,
                    "export": _policy_export}


def _override(config, args) -> int:
    command = args.override_command
    if command == "list":
        response = _state_request(config, {"op": "override.list"})
        overrides = response["overrides"]
        if not overrides:
            print("no override in force")
            return 0
        print("id\tclass\tkind\ttarget\tends")
        for item in overrides:
            print(f"{item['id']}\t{item['class_id']}\t{item['kind']}\t{item['target'] or '-'}\t"
                  f"{_local(item['until'], config.timezone)}")
        return 0
    if command == "cancel":
        item = _state_request(config, {"op": "override.cancel", "id": args.id})["override"]
        target = f" {item['target']}" if item["target"] else ""
        print(f"override {item['id']} cancelled ({item['kind']}{target} for {item['class_id']})")
        return 0
    request = {"op": "override.add", "class": args.class_id, "kind": command,
               "minutes": args.minutes}
    if command == "allow":
        request["target"] = args.name
    item = _state_request(config, request)["override"]
    ends = _local(item["until"], config.timezone)
    if command == "pause":
        print(f"{item['class_id']} paused until {ends} (id {item['id']})")
    else:
        kind = "service" if item["target_kind"] == "service" else "domain"
        print(f"{kind} {item['target']} allowed for {item['class_id']} until {ends} "
              f"(id {item['id']})")
    return 0


def _local(instant: float, timezone: str) -> str:
    return dt.datetime.fromtimestamp(instant, ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M %Z")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
