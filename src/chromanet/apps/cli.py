"""The ``chromanet`` command: a palette archive node and SCU tools.

    chromanet serve [--config FILE] [--port N] [--data-dir DIR] [--index postgresql://...] [--workers N]
                    [--metrics-port PORT] [--tls-certificate FILE ...] ...
    chromanet echo  HOST PORT [-aet AET] [-aec AEC]
    chromanet find  HOST PORT [-k Key=Value ...]
    chromanet get   HOST PORT [-k Key=Value ...] [-od DIR]
    chromanet move  HOST PORT -aem DEST [-k Key=Value ...]
    chromanet store HOST PORT FILE_OR_DIR ...
    chromanet bench HOST PORT [--op echo|find|get|move|store] [-c N] [-n M] ...

Flags follow DCMTK's where it has them (-aet, -aec, -aem, -k, -od). The SCU
commands and ``bench`` connect over TLS with ``--tls`` (``--tls-ca``,
``--tls-certificate``...); ``serve`` adds a TLS listener with
``--tls-certificate`` (see ``apps/tls_options.py``). The exit
status is 0 when every operation succeeded, 1 on a failure status or an
association that could not be made, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import os
import asyncio
import logging
import sys
import tomllib
from pathlib import Path
from typing import Any

from pydicom import Dataset, config
from tqdm import tqdm

from chromanet import loopthread, uids
from chromanet.ae import AE
from chromanet.apps.identifiers import build_identifier
from chromanet.apps.tls_options import (
    add_client_tls_arguments,
    add_serve_tls_arguments,
    apply_serve_tls_arguments,
    client_tls_from_args,
    move_destination_from_flag,
    move_destination_from_toml,
    node_tls_from_table,
)
from chromanet.status import STATUS_PENDING, code_to_category

LOGGER = logging.getLogger("chromanet.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# --------------------------------------------------------------- arguments
def _add_scu_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("-aet", "--calling-aet", default="CHROMANET-SCU", help="our AE title")
    parser.add_argument("-aec", "--called-aet", default="CHROMANET", help="the peer's AE title")
    parser.add_argument("--timeout", type=float, default=30.0, help="ACSE/DIMSE timeout in seconds")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_client_tls_arguments(parser)
    identity = parser.add_argument_group("user identity (PS3.7 D.3.3.7)")
    identity.add_argument("--username", help="send this username (identity type 1, or 2 with a passcode)")
    identity.add_argument("--passcode-env", metavar="VARIABLE",
                          help="the passcode is in this environment variable (never on the command line)")
    identity.add_argument("--jwt", type=Path, metavar="FILE", help="send the JSON Web Token in FILE (type 5)")
    identity.add_argument("--identity-response", action="store_true",
                          help="ask for a positive response to the user identity")


def _add_query_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-k",
        "--key",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a query key by keyword, e.g. -k ContentLabel=HOT* (repeatable; KEY= asks for a return key)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chromanet", description="DICOM Color Palette node and SCU tools")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the palette archive node (Q/R, Storage and Verification SCP)")
    serve.add_argument("--config", type=Path, help="TOML configuration file (flags override it)")
    serve.add_argument("--ae-title")
    serve.add_argument("--port", type=int)
    serve.add_argument("--bind", dest="bind_address")
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument(
        "--index",
        metavar="URL",
        help="postgresql://user@host:port/db: index and palettes in PostgreSQL, shared by several nodes "
        "(default: SQLite in the data directory)",
    )
    serve.add_argument("--allow", dest="allowed_calling_aets", action="append", metavar="AET")
    serve.add_argument("--move-dest", action="append", default=[], metavar="AET=HOST:PORT")
    serve.add_argument("--max-associations", type=int)
    serve.add_argument("--max-associations-per-host", type=int, help="connections one host may hold")
    serve.add_argument("--acse-timeout", type=float)
    serve.add_argument("--dimse-timeout", type=float)
    serve.add_argument("--network-timeout", type=float, help="abort when nothing arrives for this long")
    serve.add_argument("--pdu-timeout", type=float, help="abort when a PDU is not whole this long after it began")
    serve.add_argument("--idle-timeout", type=float, help="abort after this long without a DIMSE message")
    serve.add_argument("--max-identifier-size", type=int, help="bytes; larger identifiers are refused")
    serve.add_argument(
        "--default-access",
        metavar="OPS",
        help="what peers without a [[peers]] entry may do: a comma list of echo,find,get,move,store, "
        "or 'all' or 'none' (default: echo,find,get)",
    )
    serve.add_argument(
        "--require-called-aet",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reject associations called for another AE title (default: on)",
    )
    serve.add_argument(
        "--tcp-quickack",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Linux: acknowledge each receive at once, so peers running Nagle's algorithm "
        "(DCMTK without TCP_NODELAY=1, pynetdicom) do not stall on delayed ACKs (default: on)",
    )
    serve.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument(
        "--workers", type=int, metavar="N",
        help="worker processes accepting on the same port(s) under a supervisor "
        "(default: one per core; 1: this process alone)",
    )  # fmt: skip
    serve.add_argument(
        "--drain-timeout", type=float, metavar="SECONDS",
        help="on SIGTERM/SIGINT, let associations end within this long, then abort them (default 30)",
    )  # fmt: skip
    serve.add_argument(
        "--store-batch-size", type=int, metavar="N",
        help="group commit: C-STOREs made durable together at most (default 64)",
    )  # fmt: skip
    serve.add_argument(
        "--store-batch-wait", type=float, metavar="SECONDS",
        help="group commit: the longest a C-STORE waits for its batch to begin while another commit runs "
        "(default 0: a second commit starts beside it at once)",
    )  # fmt: skip
    serve.add_argument(
        "--store-batch-inflight", type=int, metavar="N",
        help="group commit: batches committing at once at most (default 2: one is written while the "
        "other waits for the disk)",
    )  # fmt: skip
    serve.add_argument(
        "--store-committer", choices=["auto", "supervisor", "worker"],
        help="who commits the stores kept in the SQLite index: the supervisor, in batches shared by all workers "
        "(with --workers 1 too: a supervisor and one worker), or each worker its own; auto (default): the "
        "supervisor when there are several workers",
    )  # fmt: skip
    serve.add_argument(
        "--store-memory-limit", type=int, metavar="BYTES",
        help="C-STOREs of data sets up to this size are received in memory and written straight into the "
        "store; larger ones are spooled to disk as they arrive (default 65536; 0: spool all)",
    )  # fmt: skip
    serve.add_argument(
        "--store-durability", choices=["auto", "syncfs", "fsync"],
        help="how a batch of stored files is made durable: one syncfs of the data file system per batch, or an "
        "fsync per file and one of the directory (default auto: syncfs on Linux >= 5.8, else fsync; "
        "README \"Storing\")",
    )  # fmt: skip
    serve.add_argument(
        "--store-inline-max", type=int, metavar="BYTES",
        help="stored instances (Part 10 files) up to this size are kept in the SQLite index, committed with "
        "their row, instead of a file each (default 65536; 0: a file for every instance)",
    )  # fmt: skip
    serve.add_argument("--metrics-port", type=int, metavar="PORT",
                       help="serve Prometheus metrics on http://HOST:PORT/metrics")
    serve.add_argument("--metrics-bind", metavar="HOST", help="the metrics address (default: --bind)")
    add_serve_tls_arguments(serve)

    hashing = commands.add_parser(
        "hash-passcode", help="print the hash of a passcode for the [users] table (reads the passcode from stdin)"
    )
    hashing.add_argument("--passcode-stdin", action="store_true", help="read it from stdin without a prompt")
    serve.add_argument("--audit-file", type=Path, help="append the audit trail (JSON lines) to this file")
    serve.add_argument("--audit-syslog", metavar="ADDRESS",
                       help="send the audit trail to syslog: a UNIX socket (/dev/log) or HOST:PORT (UDP)")
    serve.add_argument("--audit-syslog-facility", metavar="NAME", help="syslog facility (default authpriv)")

    echo = commands.add_parser("echo", help="C-ECHO")
    _add_scu_arguments(echo)

    find = commands.add_parser("find", help="C-FIND on the Color Palette information model")
    _add_scu_arguments(find)
    _add_query_arguments(find)

    get = commands.add_parser("get", help="C-GET palettes into a directory")
    _add_scu_arguments(get)
    _add_query_arguments(get)
    get.add_argument("-od", "--output-directory", type=Path, default=Path("."))

    move = commands.add_parser("move", help="C-MOVE palettes to another AE")
    _add_scu_arguments(move)
    _add_query_arguments(move)
    move.add_argument("-aem", "--move-destination", required=True)

    store = commands.add_parser("store", help="C-STORE Color Palette files")
    _add_scu_arguments(store)
    store.add_argument("paths", nargs="+", type=Path)

    from chromanet.apps import loadtool

    loadtool.add_arguments(commands.add_parser("bench", help="load generator: N associations x M operations, latencies"))
    return parser


# --------------------------------------------------------------- commands
def _scu(args: argparse.Namespace, *contexts: str) -> AE:
    ae = AE(args.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = args.timeout
    for context in contexts:
        ae.add_requested_context(context)
    return ae


def _associate(ae: AE, args: argparse.Namespace, **kwargs: Any) -> Any:
    tls = client_tls_from_args(args)
    if tls is not None:
        kwargs["tls_args"] = tls.tls_args()
    identity = _user_identity(args)
    if identity is not None:
        kwargs["ext_neg"] = [identity]
    assoc = ae.associate(args.host, args.port, ae_title=args.called_aet, **kwargs)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "failed"
        print(f"association with {args.called_aet}@{args.host}:{args.port} {reason}", file=sys.stderr)
        return None
    return assoc


def _user_identity(args: argparse.Namespace) -> Any:
    """The user identity item the flags ask for, or None."""
    from chromanet import _pdu

    asked = bool(getattr(args, "identity_response", False))
    if getattr(args, "jwt", None) is not None:
        return _pdu.UserIdentityRQ(5, args.jwt.read_bytes().strip(), b"", asked)
    username = getattr(args, "username", None)
    if not username:
        if getattr(args, "passcode_env", None):
            raise ValueError("--passcode-env needs --username")
        return None
    if args.passcode_env:
        passcode = os.environ.get(args.passcode_env)
        if passcode is None:
            raise ValueError(f"--passcode-env: {args.passcode_env} is not set")
        return _pdu.UserIdentityRQ(2, username.encode("utf-8"), passcode.encode("utf-8"), asked)
    return _pdu.UserIdentityRQ(1, username.encode("utf-8"), b"", asked)


def _status_text(status: int) -> str:
    return f"0x{status:04X} ({code_to_category(status)})"


def cmd_echo(args: argparse.Namespace) -> int:
    assoc = _associate(_scu(args, uids.Verification), args)
    if assoc is None:
        return EXIT_FAILED
    try:
        response = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" not in response:
        print("C-ECHO: no response", file=sys.stderr)
        return EXIT_FAILED
    print(f"C-ECHO: {_status_text(response.Status)}")
    return EXIT_OK if response.Status == 0 else EXIT_FAILED


_FIND_COLUMNS = ("SOPInstanceUID", "ContentLabel", "ContentDescription")


def cmd_find(args: argparse.Namespace) -> int:
    identifier = build_identifier(args.key, {"SOPInstanceUID": "", "ContentLabel": "", "ContentDescription": ""})
    assoc = _associate(_scu(args, uids.ColorPaletteInformationModelFind), args)
    if assoc is None:
        return EXIT_FAILED
    matches = 0
    final = None
    try:
        for status, found in assoc.send_c_find(identifier, uids.ColorPaletteInformationModelFind):
            if "Status" not in status:
                break
            if code_to_category(status.Status) == STATUS_PENDING and found is not None:
                matches += 1
                values = [str(found.get(column, "")) for column in _FIND_COLUMNS]
                print("  ".join(values))
            else:
                final = status.Status
    finally:
        assoc.release()
    if final is None:
        print("C-FIND: the association ended before the final response", file=sys.stderr)
        return EXIT_FAILED
    print(f"C-FIND: {_status_text(final)}, {matches} match(es)", file=sys.stderr)
    return EXIT_OK if final == 0 else EXIT_FAILED


def _show_suboperations(bar: tqdm, status: Dataset) -> None:
    """A C-GET/C-MOVE response's sub-operation counts on the progress bar."""
    counts = {name: int(status.get(f"NumberOf{name}Suboperations", 0) or 0)
              for name in ("Completed", "Failed", "Warning", "Remaining")}
    bar.total = sum(counts.values())
    bar.set_postfix(failed=str(counts["Failed"]), refresh=False)
    bar.update(bar.total - counts["Remaining"] - bar.n)


def _retrieve(responses: Any, label: str) -> int:
    final: Dataset | None = None
    failed_list: Any = None
    # a tqdm bar on stderr, only on a terminal, and only for a retrieve that lasts
    with tqdm(desc=label, unit="sub-op", file=sys.stderr, disable=None, dynamic_ncols=True, delay=0.5) as bar:
        for status, identifier in responses:
            if "Status" not in status:
                break
            _show_suboperations(bar, status)
            if code_to_category(status.Status) != STATUS_PENDING:
                final = status
                failed_list = identifier.get("FailedSOPInstanceUIDList") if identifier is not None else None
    if final is None:
        print(f"{label}: the association ended before the final response", file=sys.stderr)
        return EXIT_FAILED
    counts = ", ".join(
        f"{name.lower()} {int(final.get(f'NumberOf{name}Suboperations', 0) or 0)}"
        for name in ("Completed", "Failed", "Warning")
    )
    print(f"{label}: {_status_text(final.Status)}, {counts}", file=sys.stderr)
    if failed_list:
        print(f"failed: {failed_list}", file=sys.stderr)
    return EXIT_OK if final.Status == 0 else EXIT_FAILED


def cmd_get(args: argparse.Namespace) -> int:
    identifier = build_identifier(args.key, {})
    args.output_directory.mkdir(parents=True, exist_ok=True)
    assoc = _associate(_scu(args, uids.ColorPaletteInformationModelGet), args)
    if assoc is None:
        return EXIT_FAILED
    assoc.store_directory = args.output_directory
    try:
        return _retrieve(assoc.send_c_get(identifier, uids.ColorPaletteInformationModelGet), "C-GET")
    finally:
        assoc.release()


def cmd_move(args: argparse.Namespace) -> int:
    identifier = build_identifier(args.key, {})
    assoc = _associate(_scu(args, uids.ColorPaletteInformationModelMove), args)
    if assoc is None:
        return EXIT_FAILED
    try:
        responses = assoc.send_c_move(identifier, args.move_destination, uids.ColorPaletteInformationModelMove)
        return _retrieve(responses, "C-MOVE")
    finally:
        assoc.release()


def cmd_store(args: argparse.Namespace) -> int:
    files: list[Path] = []
    for path in args.paths:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    assoc = _associate(_scu(args, uids.ColorPaletteStorage), args)
    if assoc is None:
        return EXIT_FAILED
    failures = 0
    try:
        for path in files:
            try:
                response = assoc.send_c_store(path)
            except (ValueError, OSError) as exc:
                print(f"{path}: not sent ({exc})", file=sys.stderr)
                failures += 1
                continue
            status = response.get("Status")
            if status is None:
                print(f"{path}: no response", file=sys.stderr)
                failures += 1
                break
            ok = code_to_category(status) in ("Success", "Warning")
            failures += 0 if ok else 1
            print(f"{path}: {_status_text(status)}")
    finally:
        if assoc.is_established:
            assoc.release()
    return EXIT_OK if failures == 0 else EXIT_FAILED


# ------------------------------------------------------------------ serve
def load_node_config(args: argparse.Namespace) -> Any:
    from chromanet.apps.node import NodeConfig

    config = NodeConfig()
    settings: dict[str, Any] = {}
    if args.config is not None:
        with open(args.config, "rb") as handle:
            settings = tomllib.load(handle)
    access_tables = {name: settings.pop(name, None) for name in ("access", "peers", "identity", "users")}
    base = args.config.parent if args.config is not None else Path(".")
    for key, value in settings.items():
        if key == "move_destinations":
            config.move_destinations = {aet: move_destination_from_toml(aet, hp) for aet, hp in value.items()}
        elif key == "tls":
            config.tls = node_tls_from_table(value, str(args.config))
        elif key == "data_dir":
            config.data_dir = Path(value)
        elif key == "audit" and isinstance(value, dict):
            _audit_settings(config, value, args.config)
        elif hasattr(config, key):
            setattr(config, key, value)
        else:
            raise ValueError(f"unknown setting {key!r} in {args.config}")
    for key in (
        "ae_title",
        "port",
        "bind_address",
        "data_dir",
        "index",
        "allowed_calling_aets",
        "max_associations",
        "max_associations_per_host",
        "acse_timeout",
        "dimse_timeout",
        "network_timeout",
        "pdu_timeout",
        "idle_timeout",
        "max_identifier_size",
        "require_called_aet",
        "tcp_quickack",
        "log_level",
        "audit_file",
        "audit_syslog",
        "audit_syslog_facility",
        "workers",
        "drain_timeout",
        "store_batch_size",
        "store_batch_wait",
        "store_batch_inflight",
        "store_committer",
        "store_memory_limit",
        "store_durability",
        "store_inline_max",
        "metrics_port",
        "metrics_bind",
    ):
        value = getattr(args, key, None)
        if value is not None:
            setattr(config, key, value)
    config.access = _access_policy(access_tables, base, getattr(args, "default_access", None))
    for flag, entries, tls in (("--move-dest", args.move_dest, False), ("--move-dest-tls", args.move_dest_tls, True)):
        for entry in entries:
            aet, destination = move_destination_from_flag(entry, tls, flag)
            config.move_destinations[aet] = destination
    apply_serve_tls_arguments(config.tls, args)
    if args.no_plain:
        config.listen_plain = False
    return config


def _access_policy(tables: dict[str, Any], base: Path, default_access: str | None) -> Any:
    """The node's AccessPolicy from the [access], [[peers]], [identity] and
    [users] tables, with ``--default-access`` over the table's default."""
    from chromanet.apps.access import policy_from_settings
    from chromanet.apps.node import DEFAULT_OPERATIONS

    access = dict(tables["access"] or {})
    access.setdefault("default_operations", sorted(DEFAULT_OPERATIONS))
    if default_access is not None:
        chosen = [part.strip() for part in default_access.split(",") if part.strip()]
        access["default_operations"] = [] if chosen == ["none"] else chosen
    return policy_from_settings(access, tables["peers"], tables["identity"], tables["users"], base=base)


def cmd_hash_passcode(args: argparse.Namespace) -> int:
    """Print the stored form of a passcode (the config never holds one in clear)."""
    import getpass

    from chromanet.apps.access import hash_passcode

    if args.passcode_stdin or not sys.stdin.isatty():
        passcode = sys.stdin.readline().rstrip("\r\n")
    else:
        passcode = getpass.getpass("passcode: ")
        if getpass.getpass("again: ") != passcode:
            raise ValueError("the two passcodes differ")
    if not passcode:
        raise ValueError("empty passcode")
    print(hash_passcode(passcode))
    return EXIT_OK
def _audit_settings(config: Any, table: dict[str, Any], source: Any) -> None:
    """The TOML [audit] table: file, syslog, syslog_facility."""
    for key, value in table.items():
        if key == "file":
            config.audit_file = Path(value)
        elif key in ("syslog", "syslog_facility"):
            setattr(config, f"audit_{key}", str(value))
        else:
            raise ValueError(f"unknown setting {key!r} in [audit] of {source}")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM, then stop accepting, let the
    associations in progress end within the drain timeout, abort the rest
    and close the archive; with workers, through their supervisor."""
    import signal

    from chromanet.apps.node import serve
    from chromanet.errors import ChromanetError

    config = load_node_config(args)
    if config.workers is not None and config.workers < 1:
        raise ValueError("--workers must be 1 or more")
    if config.uses_supervisor:
        from chromanet.apps.workers import LOG_FORMAT, run_supervisor

        logging.basicConfig(level=config.log_level, format=LOG_FORMAT)
        return run_supervisor(config)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop = loopthread.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    task = loop.create_task(serve(config, stop=stop))
    def on_signal() -> None:
        if stop.is_set():  # a second one: abort what is left now
            task.cancel()
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    try:
        loop.run_until_complete(task)
        LOGGER.info("stopped")
    except asyncio.CancelledError:
        LOGGER.info("stopped")
    except ChromanetError as exc:  # the archive cannot be opened: busy, too new, unreachable
        print(f"chromanet serve: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        loop.close()
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from chromanet.apps import loadtool

    return loadtool.run(args)


COMMANDS = {
    "serve": cmd_serve,
    "echo": cmd_echo,
    "find": cmd_find,
    "get": cmd_get,
    "move": cmd_move,
    "store": cmd_store,
    "bench": cmd_bench,
    "hash-passcode": cmd_hash_passcode,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Query values are not valid element values ("HOT*" in a CS): no warnings.
    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE
    if args.command not in ("serve", "hash-passcode"):
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except ValueError as exc:
        print(f"chromanet {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
