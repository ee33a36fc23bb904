"""`classguard device ...`: enrol, import, export URLs, rotate, revoke, from the command line.

The tokens are made here and only their hashes cross the control socket (admin.devices)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from admin.devices import (
    doh_base, doh_url, dot_hostname, new_token, open_secret_file, read_csv, urls_csv,
)
from admin.errors import ControlError
from admin.mobileconfig import profile
from classguard.config import Config
from common.tokens import token_sha256


def add_parser(commands, common) -> None:
    """`classguard device ...` on the CLI's subparsers."""

    device = commands.choices.get("device")
    if device is None:
        device = commands.add_parser("device", parents=[common],
                                     help="devices: enrolment, tokens, DoH URLs, DoT hostnames")
        sub = device.add_subparsers(dest="device_command", required=True)
    else:  # `device data` and `device erase` are there already: add ours beside them
        sub = next(action for action in device._actions
                   if isinstance(action, argparse._SubParsersAction))
    add = sub.add_parser("add", parents=[common], help="enrol a device; prints its DoH URL and DoT "
                                                         "hostname (the token is shown only then)")
    add.add_argument("id", metavar="ID")
    add.add_argument("--class", dest="class_id", metavar="CLASS", required=True)
    add.add_argument("--address", action="append", default=[], metavar="IP",
                     help="a school address of the device (repeatable)")
    add.add_argument("--mobileconfig", type=Path, metavar="FILE",
                     help="also write an Apple configuration profile (DoH, else DoT) for an MDM")
    enrol = sub.add_parser("import", parents=[common],
                           help="enrol every device of a CSV (id,class[,address]) at once")
    enrol.add_argument("csv", type=Path, metavar="CSV")
    enrol.add_argument("--output", type=Path, metavar="FILE",
                       help="write id,doh_url,dot_hostname to this new file (owner-only) "
                            "instead of printing them")
    export = sub.add_parser("export-urls", parents=[common], help="new tokens and their URLs for an "
                                                                  "MDM (needs --rotate)",
                            description=EXPORT_HELP)
    export.add_argument("--rotate", action="store_true",
                        help="give the devices new tokens (the old ones stop working) and print the URLs")
    export.add_argument("--class", dest="class_id", metavar="CLASS", help="only the devices of this class")
    export.add_argument("--output", type=Path, metavar="FILE", help="write the CSV to this new file")
    rotate = sub.add_parser("rotate", parents=[common],
                            help="a new token for a device; the old one stops working at once")
    rotate.add_argument("id", metavar="ID")
    revoke = sub.add_parser("revoke", parents=[common],
                            help="the device's token stops working (its school addresses still count)")
    revoke.add_argument("id", metavar="ID")


def run(config: Config, args, send: Callable[[Config, dict], dict]) -> int:
    """One `classguard device` command; `send` carries a request to the running server or the
    store (and raises on a refusal)."""

    command = args.device_command
    if command == "revoke":
        response = send(config, {"op": "device.revoke", "id": args.id})
        print(f"device {args.id}: token revoked; its DoH URL and DoT hostname stop working "
              f"{applied(config, response)}")
        return 0
    if command == "export-urls" and not args.rotate:
        raise ControlError("nothing exported: " + " ".join(EXPORT_HELP.split()))
    _need_addresses(config)
    if command == "add":
        token = new_token()
        response = send(config, {"op": "device.add", "id": args.id, "class": args.class_id,
                                 "token_sha256": token_sha256(token), "addresses": args.address})
        print(f"device {args.id} enrolled in class {args.class_id} {applied(config, response)}")
        _print_addresses(config, token)
        if args.mobileconfig is not None:
            _write_profile(config, args.id, token, args.mobileconfig)
        return 0
    if command == "rotate":
        token = new_token()
        response = send(config, {"op": "device.rotate", "tokens": {args.id: token_sha256(token)}})
        print(f"device {args.id}: new token; the old one no longer works {applied(config, response)}")
        _print_addresses(config, token)
        return 0
    if command == "import":
        rows = read_csv(args.csv)
        issued = [(row.id, new_token()) for row in rows]
        devices = [{"id": row.id, "class": row.class_id, "token_sha256": token_sha256(token),
                    "addresses": list(row.addresses)} for row, (_, token) in zip(rows, issued)]
        with _Output(args.output) as output:
            response = send(config, {"op": "device.import", "devices": devices,
                                     "source": args.csv.name})
            output.write(urls_csv(config, issued))
        print(f"{len(rows)} devices enrolled from {args.csv} {applied(config, response)}"
              + (f"; their URLs are in {args.output}" if args.output else ""), file=sys.stderr)
        return 0
    # export-urls --rotate
    request: dict[str, Any] = {"op": "device.list"}
    if args.class_id:
        request["class"] = args.class_id
    listed = send(config, request)["devices"]
    if not listed:
        raise ControlError("no device to export" + (f" in class {args.class_id}" if args.class_id else ""))
    issued = [(item["id"], new_token()) for item in listed]
    with _Output(args.output) as output:
        response = send(config, {"op": "device.rotate", "tokens": {
            device_id: token_sha256(token) for device_id, token in issued}})
        output.write(urls_csv(config, issued))
    print(f"{len(issued)} devices have new tokens, the old ones no longer work "
          f"{applied(config, response)}" + (f"; their URLs are in {args.output}" if args.output else ""),
          file=sys.stderr)
    return 0


def _write_profile(config: Config, device_id: str, token: str, path: Path) -> None:
    """The device's Apple profile, owner-only like everything that holds a token."""

    url, server = doh_url(config, token), dot_hostname(config, token)
    data = profile(device_id, doh_url=url) if url else profile(device_id, dot_server=server)
    with open_secret_file(path) as out:
        out.write(data.decode("utf-8"))
    print(f"Apple configuration profile written to {path} (it holds the token: keep it private)")


def _need_addresses(config: Config) -> None:
    """A token is shown only in the URLs: without a doh or dot section there would be none."""

    if config.doh is None and not (config.dot or {}).get("hostname"):
        raise ControlError("the configuration has no doh section and no dot.hostname, so a "
                           "device's URL cannot be printed; add doh: {public_url: "
                           "\"https://YOUR-HOST/dns-query\"} first")
    if config.doh is not None and not config.doh.get("public_url"):
        print(f"note: doh.public_url is not set; the URLs use {doh_base(config)}, which tablets "
              "at home cannot reach", file=sys.stderr)


def _print_addresses(config: Config, token: str) -> None:
    url, hostname = doh_url(config, token), dot_hostname(config, token)
    print(f"  DoH URL:      {url or '- (no doh section)'}")
    print(f"  DoT hostname: {hostname or '- (no dot.hostname)'}")
    print("  shown only now: classguard keeps just the token's SHA-256")


def applied(config: Config, response: dict) -> str:
    """Where a change went, for the CLI's message: "(policy version 7; ...)"."""
    version = response.get("version")
    if response.get("via") == "server":
        return f"(policy version {version}; the running server applied it)"
    if config.store != "embedded":
        return (f"(policy version {version}, written {store_place(config)}; every server on it "
                "applies it within a second)")
    return f"(policy version {version}; no server runs on {config.state_dir}, the next one uses it)"


def store_place(config: Config) -> str:
    """"under ./state" or "in Redis (redis://host:6379/0)": where the configured store is."""
    if config.store == "embedded":
        return f"under {config.state_dir}"

    from store.redis_backend import redacted_url  # lazy: loads redis, not needed embedded

    return f"in Redis ({redacted_url(config.store)})"


class _Output:
    """Where the URLs go: stdout, or a new owner-only file created before anything changes (so
    that tokens are never issued with nowhere to write them) and removed if nothing was."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.file = None
        self.written = False

    def __enter__(self) -> _Output:
        if self.path is not None:
            self.file = open_secret_file(self.path)
        return self

    def write(self, text: str) -> None:

        (self.file or sys.stdout).write(text)
        self.written = True

    def __exit__(self, kind, error, traceback) -> None:
        if self.file is None:
            return
        self.file.close()
        if not self.written:
            self.path.unlink(missing_ok=True)


EXPORT_HELP = """\
classguard keeps only the SHA-256 of each device token, so the URLs given out when devices were
enrolled (by `device add` and `device import`) cannot be shown again. `export-urls --rotate`
gives every device (or those of --class) a new token and prints the new URLs as
id,doh_url,dot_hostname for an MDM; the old tokens stop working at once, so push the new URLs
right away. Without --rotate nothing is changed and the command explains this."""
