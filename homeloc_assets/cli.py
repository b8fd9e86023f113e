"""The ``homeloc`` command: run the pipeline headless, make data, inspect HLLs, open the UI.

``homeloc run`` materialises the same Dagster definitions as the UI, against
``DAGSTER_HOME`` (else the project's instance in ``<storage>/dagster_home``,
which ``homeloc ui`` shows). Running the same command again resumes: batches
whose files are complete are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from homeloc_assets.atomic import write_text_atomic
from homeloc_assets.layout import Layout, OutputLayout
from homeloc_assets.names import (
    COUNTRIES,
    HOME_RULE_SENSITIVITY,
    HOMELOC_EXPORTS,
    HOMELOC_PUBLISHED,
    USER_CLASSIFICATION,
    WORLD_COUNTRIES,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A failure with a one-line reason for the user."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- run
def add_setting_flags(p) -> None:
    """The flags of the settings that have one (``settings.Option.flag``): type, help and
    default named from ``Settings``; ``dest`` is the setting's name, ``None`` when not given."""
    from homeloc_assets.settings import options, shown_default

    for f, opt in options():
        if not opt.flag:
            continue
        if isinstance(f.default, bool):  # --no-X switches a default-on setting off
            p.add_argument(opt.flag, dest=f.name, action="store_const", const=not f.default,
                           default=None, help=opt.help)
            continue
        shown = shown_default(f.name)
        default = f"default: {opt.env}, else {shown}" if shown else f"default: {opt.env}"
        metavar = opt.metavar or opt.flag.lstrip("-").upper().replace("-", "_")
        p.add_argument(opt.flag, dest=f.name, default=None,
                       metavar=None if opt.choices else metavar,
                       type=None if opt.choices else type(f.default), choices=opt.choices,
                       action="append" if opt.repeat else "store",
                       help=f"{opt.help} ({default})")


def setting_changes(args) -> dict:
    """The settings given as flags (``add_setting_flags``), as ``Settings.with_`` changes."""
    from homeloc_assets.settings import options

    changes = {}
    for f, opt in options():
        value = getattr(args, f.name, None) if opt.flag else None
        if value is not None:
            changes[f.name] = ";".join(value) if opt.repeat else value
    return changes


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run", help="run the whole pipeline on a userdays CSV",
        description="Infer every user's home country from a userdays CSV (user_guid, latitude, "
                    "longitude, userday_hll) and classify them as Locals or Tourists of the study "
                    "country: materialises the project's Dagster assets headless, writes the "
                    "exports, figures and landscape cells into --out as one published set, and "
                    "prints a summary. Running the same command again resumes.",
        epilog="Exit codes: 0 success, 1 machine failure (disk, database), 2 bad input or usage, "
               "130/143 interrupted (run again to resume).")
    p.add_argument("--input", required=True, help="userdays CSV sorted by user_guid")
    add_setting_flags(p)
    p.add_argument("--dagster-home", default=None,
                   help="Dagster instance folder, to see the runs in the UI "
                        "(default: DAGSTER_HOME, else <out>/.homeloc/dagster_home, "
                        "which homeloc ui shows)")
    p.add_argument("--fresh", action="store_true", help="recompute finished batches too")
    p.add_argument("--no-figures", action="store_true",
                   help="skip the report figures (<out>/figures, a few seconds)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


#: the project's dagster.yaml (in a source checkout; an installed package has none)
PROJECT_DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"


def _instance(home: Path):
    """The Dagster instance in ``home``, made with the project's dagster.yaml when new."""
    import fcntl

    import dagster as dg

    prepare_dagster_home(home)
    os.environ["DAGSTER_HOME"] = str(home.resolve())
    # two runs starting at once would both create the SQLite schema (UNIQUE constraint
    # failed: alembic_version): the first creates it, the second waits for that
    with open(home / ".homeloc-instance.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        instance = dg.DagsterInstance.get()
        instance.get_runs_count()  # the run storage's tables exist from here on
    return instance


def prepare_dagster_home(home: Path) -> None:
    """Create ``home`` with the project's dagster.yaml (kept when it is there)."""
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        text = (PROJECT_DAGSTER_YAML.read_text() if PROJECT_DAGSTER_YAML.is_file()
                else "telemetry:\n  enabled: false\n")
        write_text_atomic(cfg, text)


#: errors that mean "the input (or a choice of the user) is wrong": exit 2
_USAGE_ERRORS = {"DsnError", "InputError", "RejectShareError", "CountryError", "LayerError",
                 "ImplausibleInputError"}


def _failure(result) -> tuple[str, int]:
    """The innermost real error of a failed in-process run on one line, and its exit code.

    An error raised in a worker process arrives wrapped (the pool's
    ``_RemoteTraceback`` is its cause): the reason is the exception itself,
    not the traceback text.
    """
    for event in result.all_events:
        if event.is_step_failure:
            err = event.step_failure_data.error
            chain = []
            while err is not None:
                chain.append(err)
                err = err.cause
            real = [e for e in chain if e.cls_name not in ("_RemoteTraceback", "RemoteTraceback")]
            for e in reversed(real or chain):
                text = (e.message or "").strip()
                lines = [ln for ln in text.splitlines() if ln.strip()]
                if lines:
                    msg = re.sub(r"^[\w.]+: ", "", lines[0].strip())
                    code = EXIT_USAGE if any(e2.cls_name in _USAGE_ERRORS for e2 in chain) else EXIT_FAILED
                    return msg, code
            return (real or chain)[0].cls_name or "error", EXIT_FAILED
    return "run failed", EXIT_FAILED


def _failure_reason(result) -> str:
    """The innermost error message of a failed in-process run, on one line."""
    return _failure(result)[0]


def _quiet_logs() -> dict:
    return {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


class _Progress:
    """Batches done and users/s, from the stats files the workers write."""

    def __init__(self, layout: Layout, keys: list[str], quiet: bool) -> None:
        self.layout, self.keys, self.quiet = layout, keys, quiet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.tty = sys.stderr.isatty()
        self._users: dict[str, int] = {}  # finished batch -> users (a finished batch stays so)

    def _done(self) -> tuple[int, int]:
        from homeloc_assets.batch_runner import read_stats

        for k in self.keys:
            if k not in self._users:
                try:
                    stats = read_stats(self.layout, k)
                except (ValueError, OSError):  # being replaced right now: next tick
                    continue
                if stats is not None:
                    self._users[k] = int(stats["users"])
        return len(self._users), sum(self._users.values())

    def _loop(self) -> None:
        start = time.monotonic()
        total = len(self.keys)
        if self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            with Progress(TextColumn("batches"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                          console=None, transient=False) as bar:
                task = bar.add_task("batches", total=total, rate="")
                while True:
                    n, users = self._done()
                    rate = users / max(time.monotonic() - start, 1e-9)
                    bar.update(task, completed=n, rate=f"{rate:,.0f} users/s")
                    if self._stop.wait(0.5):
                        n, users = self._done()
                        bar.update(task, completed=n)
                        return
        else:
            last = -1
            while True:
                stopping = self._stop.wait(2.0)
                n, users = self._done()
                if n != last:
                    rate = users / max(time.monotonic() - start, 1e-9)
                    print(f"homeloc: batches {n}/{total}, {users:,} users, {rate:,.0f} users/s",
                          file=sys.stderr, flush=True)
                    last = n
                if stopping:
                    return

    def __enter__(self):
        if not self.quiet:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def cmd_run(args) -> int:
    """Materialise everything for one input file; print the summary."""
    import dagster as dg

    from homeloc_assets.settings import Settings

    t0 = time.monotonic()
    input_path = Path(args.input)
    if not input_path.is_file():
        raise CliError(f"input file not found: {input_path}", EXIT_USAGE)
    try:
        base = Settings.from_env()
    except ValueError as exc:  # e.g. a bad HOMELOC_DASK_SCHEDULER: one line, not a traceback
        raise CliError(str(exc), EXIT_USAGE) from None
    changes = setting_changes(args)
    out = Path(changes.pop("output_dir", None) or base.output_dir)
    try:
        settings = base.with_(output_dir=str(out), input_dir=str(input_path.parent), **changes)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    _check_writable(out, settings.storage_path)
    # the project's persistent instance (what `homeloc ui` shows) unless another is named
    home = Path(args.dagster_home or os.environ.get("DAGSTER_HOME") or settings.layout.dagster_home)
    instance = _instance(home)

    from homeloc_assets.catalog import Catalog
    from homeloc_assets.definitions import build_definitions
    from homeloc_assets.defs.batches import user_batches
    from homeloc_assets.inputs import InputError

    defs = build_definitions(settings)
    assets = defs.assets
    resources = defs.resources
    log_cfg = _quiet_logs()
    say = (lambda *a: None) if args.quiet else (lambda m: print(f"homeloc: {m}", file=sys.stderr, flush=True))

    source = json.dumps([settings.countries_path, settings.countries_name_column,
                         settings.countries_code_column])
    countries_file = settings.layout.countries
    marker = settings.layout.countries_source
    have_countries = countries_file.exists() and (
        marker.exists() and marker.read_text() == source)
    if not have_countries or instance.get_latest_materialization_event(
            dg.AssetKey(COUNTRIES)) is None:
        res = dg.materialize(assets, selection=[WORLD_COUNTRIES, COUNTRIES],
                             instance=instance, resources=resources, run_config=log_cfg,
                             raise_on_error=False)
        if not res.success:
            raise CliError(f"countries: {_failure_reason(res)}")
        marker.write_text(source)

    from homeloc_assets.batch_runner import batch_assets, is_finished
    from homeloc_assets.geo import CountryError, resolve_country
    from homeloc_assets.geo.layers import LayerError

    try:  # a wrong study country or layer stops the run before planning and batches
        import geopandas as gpd

        resolve_country(gpd.read_parquet(countries_file), settings.study_country)
        _check_layers(settings)
    except (CountryError, LayerError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None

    catalog = Catalog(settings.storage_path)
    try:
        plan_id, keys = catalog.register(input_path, settings.batch_users)
    except InputError as exc:
        msg = str(exc)
        raise CliError(msg if msg.startswith(str(input_path)) else f"{input_path}: {msg}",
                       EXIT_USAGE) from None
    _sync_partitions(instance, catalog, user_batches.name, input_path, plan_id, keys)
    # this run's result describes this input only, whatever else the instance holds
    catalog.set_dataset([plan_id], source="homeloc run")

    say(f"{input_path}: {len(keys)} batch(es) of about {settings.batch_users} users; "
        f"backend {settings.backend}; "
        + (f"Dask cluster {settings.dask_scheduler}" if settings.dask_scheduler
           else f"{settings.n_workers} worker(s)"))
    from homeloc_assets.defs.jobs import batch_run_config, range_tags

    tags_all = range_tags(keys)
    step_assets = batch_assets([spec.name for spec in settings.layer_specs])
    todo = [k for k in keys if args.fresh
            or not is_finished(settings.layout, k, step_assets)]
    if len(todo) < len(keys):
        say(f"resuming: {len(keys) - len(todo)} finished batch(es) kept")
    if todo:
        run_config = {**log_cfg, **batch_run_config(reuse_finished=not args.fresh)}
        with _Progress(settings.layout, keys, args.quiet):
            res = dg.materialize(
                assets,
                selection=step_assets,
                instance=instance, resources=resources, run_config=run_config,
                tags=tags_all, raise_on_error=False,
            )
        if not res.success:
            msg, code = _failure(res)
            raise CliError(f"batches: {msg}", code)
        _print_check_failures(res)
    from homeloc_assets.defs.classification import DATASET_TAG
    from homeloc_assets.defs.reports import REPORT_ASSETS, make_layer_reports

    final = [USER_CLASSIFICATION, HOMELOC_EXPORTS]
    if not args.no_figures:
        final += [k.to_user_string() for a in (*REPORT_ASSETS,
                                                *make_layer_reports(settings.layer_specs))
                  for k in a.keys]
        final.append(HOME_RULE_SENSITIVITY)
    publish_cfg = dict(log_cfg)
    publish_cfg["ops"] = {HOMELOC_PUBLISHED: {"config": {
        "figures": not args.no_figures, "landscape": settings.landscape}}}
    # one run from the classification to the published set (each Dagster run costs a new
    # SQLite event file, about 0.5 s); the per-batch landscape assets make it a run over the
    # batches' range, in which the unpartitioned assets run once
    tags = {DATASET_TAG: plan_id}
    if settings.landscape:
        from homeloc_assets.defs.landscape import landscape_batch_keys, make_landscape_assets

        batch_keys = landscape_batch_keys(settings.layer_specs)
        rest = [k.to_user_string() for a in make_landscape_assets(settings.layer_specs)
                for k in a.keys if k.to_user_string() not in batch_keys]
        if args.no_figures:
            rest = [k for k in rest if not k.endswith("_map")]
        final += [*batch_keys, *rest]
        tags.update(tags_all)
    final.append(HOMELOC_PUBLISHED)  # last: every name switches at once
    res = dg.materialize(assets, selection=final,
                         instance=instance, resources=resources,
                         run_config=publish_cfg, tags=tags, raise_on_error=False)
    if not res.success:
        raise CliError(*_failure(res))
    _print_check_failures(res)
    _check_published(settings)
    summary = json.loads(settings.output_layout.summary.read_text())
    elapsed = time.monotonic() - t0
    _print_summary(summary, out, elapsed)
    return EXIT_OK


def _check_published(settings) -> None:
    """The run's own classification is the published set (else one error line, exit 1)."""
    from homeloc_assets.provenance import read_run_info
    from homeloc_assets.publish import current_generation

    gen = read_run_info(settings.layout.classification).generation
    if current_generation(settings.output_dir) != gen:
        raise CliError(f"{settings.output_dir}: the new set {gen} is incomplete and was not "
                       "published; the previous one stays")


def _print_check_failures(res) -> None:
    """One ``homeloc: warning:`` line per asset check of ``res`` that did not pass (even --quiet)."""
    for ev in res.get_asset_check_evaluations():
        if not ev.passed:
            meta = ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in sorted(ev.metadata.items()))
            print(f"homeloc: warning: check {ev.asset_key.to_user_string()}/{ev.check_name} "
                  f"did not pass{': ' + meta if meta else ''}", file=sys.stderr, flush=True)


def _check_layers(settings) -> None:
    """Load every region layer now (cached for the batches) and check the study region's code."""
    import geopandas as gpd

    from homeloc_assets.geo import resolve_country
    from homeloc_assets.geo.layers import check_region_code, load_layer

    layers = {s.name: load_layer(s, settings.layout.lookup) for s in settings.layer_specs}
    region = settings.study_region_spec
    if region and region[0] == "country":
        resolve_country(gpd.read_parquet(settings.layout.countries), region[1])
    elif region:
        check_region_code(layers[region[0]], region[1])


def _check_writable(*folders: Path) -> None:
    """Fail early, on one line, when an output folder is a file (2) or cannot be written (1)."""
    for folder in folders:
        for p in (folder, *folder.parents):
            if p.exists():
                if not p.is_dir():
                    raise CliError(f"{folder}: {p} is a file, not a folder", EXIT_USAGE)
                break
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".homeloc-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CliError(f"{folder}: cannot write there: {exc.strerror or exc}") from None


def _sync_partitions(instance, catalog, name: str, path: Path, plan_id: str, keys: list[str]) -> None:
    """Add this plan's batches; retire batches of older versions of the same file
    and batches whose plan is no longer in the catalog."""
    existing = instance.get_dynamic_partitions(name)
    known = set(catalog.plan_ids())
    retire = catalog.keys_to_retire(existing, paths=[path], keep_plan=plan_id)
    retire += [k for k in existing if k not in keys and k not in retire
               and _plan_of(k) not in known]
    for key in retire:
        instance.delete_dynamic_partition(name, key)
    have = set(instance.get_dynamic_partitions(name))
    new = [k for k in keys if k not in have]
    if new:
        instance.add_dynamic_partitions(name, new)


def _plan_of(key: str) -> str | None:
    """The plan of partition ``key`` (None: not a homeloc batch key)."""
    from homeloc_assets.catalog import split_key

    try:
        return split_key(key)[0]
    except ValueError:
        return None


def _print_summary(s: dict, out: Path, elapsed: float) -> None:
    users = s["users"]
    rate = users / elapsed if elapsed > 0 else 0.0
    lines = [
        f"users              {users:>12,}",
        f"  with a home      {s['users_with_home']:>12,}",
        f"  Locals           {s['locals']:>12,}",
        f"  Tourists         {s['tourists']:>12,}",
        f"  undetermined     {s['undetermined']:>12,}",
        f"rows               {s['rows']:>12,}",
        f"rejected rows      {s['rejected_rows']:>12,}",
        f"points in no country {s['points_in_no_country']:>10,}",
        f"time               {elapsed:>11.1f}s ({rate:,.0f} users/s)",
        f"exports            {out.resolve()}",
    ]
    figures = OutputLayout(out).figures
    if figures.is_dir():
        lines.append(f"figures            {figures.resolve()}")
    print("\n".join(lines))


# ------------------------------------------------------------------------- synth
def _add_synth(sub) -> None:
    sub.add_parser(
        "synth",
        help="generate a synthetic userdays CSV with known truth (see `homeloc synth --help`)",
        add_help=False,
    )


# --------------------------------------------------------------------------- hll
def _add_hll(sub) -> None:
    p = sub.add_parser("hll", help="inspect postgresql-hll values (like hll_print / hll_cardinality)")
    p.add_argument("op", choices=["card", "union", "print"])
    p.add_argument("values", nargs="*", help="'\\x..' hex values (default: one per line on stdin)")


def cmd_hll(args) -> int:
    """``card``: one cardinality per value; ``union``: the union's hex; ``print``: describe."""
    from homeloc_assets import hll

    values = args.values or [ln.strip() for ln in sys.stdin if ln.strip()]
    if not values:
        raise CliError("no hll values given (arguments or stdin)", EXIT_USAGE)
    try:
        if args.op == "card":
            for v in values:
                print(repr(hll.cardinality(v)))
        elif args.op == "union":
            u = hll.union(values)
            print(hll.to_hex(u))
        else:
            for v in values:
                print(hll.describe(v))
    except hll.HLLError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return EXIT_OK


# ---------------------------------------------------------------------------- ui
def _add_ui(sub) -> None:
    p = sub.add_parser(
        "ui", help="open the Dagster UI on this project (dagster dev)",
        description="The Dagster UI on the project's persistent instance (<out>/.homeloc/"
                    "dagster_home, the one `homeloc run` uses), so what `homeloc run` made is "
                    "shown materialised. The input sensor watches --input-dir (created when "
                    "missing), or the folder of --input FILE.")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--out", default=None, help="output folder (default: HOMELOC_OUTPUT_DIR or ./out)")
    p.add_argument("--input", default=None, metavar="FILE",
                   help="a userdays CSV: the sensor watches its folder")
    p.add_argument("--input-dir", default=None,
                   help="folder the sensor watches (default: HOMELOC_INPUT_DIR or ./data/input)")
    p.add_argument("--dagster-home", default=None,
                   help="Dagster instance folder (default: DAGSTER_HOME, else <out>/.homeloc/dagster_home)")


def ui_environment(args) -> tuple[dict[str, str], str]:
    """The environment of ``homeloc ui`` and the line that says what it serves."""
    from homeloc_assets.inputs.folder import scan_input_dir
    from homeloc_assets.settings import Settings

    base = Settings.from_env()
    out = Path(args.out or base.output_dir).resolve()
    if args.input:
        src = Path(args.input)
        if not src.is_file():
            raise CliError(f"input file not found: {src}", EXIT_USAGE)
        watch = src.resolve().parent
    else:
        watch = Path(args.input_dir or base.input_dir).resolve()
    settings = base.with_(output_dir=str(out), input_dir=str(watch))
    watch.mkdir(parents=True, exist_ok=True)
    home = Path(args.dagster_home or os.environ.get("DAGSTER_HOME")
                or settings.layout.dagster_home).resolve()
    prepare_dagster_home(home)  # the instance itself is dagster dev's
    env = dict(os.environ, DAGSTER_HOME=str(home), HOMELOC_OUTPUT_DIR=str(out),
               HOMELOC_INPUT_DIR=str(watch))
    if settings.storage_dir:
        env["HOMELOC_STORAGE_DIR"] = str(Path(settings.storage_dir).resolve())
    found, _ = scan_input_dir(watch)
    line = (f"homeloc ui: http://{args.host}:{args.port} — instance {home}; exports {out}; "
            f"the input sensor watches {watch} ({len(found)} CSV file(s) now)")
    return env, line


def cmd_ui(args) -> int:
    """Run ``dagster dev`` on the project's workspace and its persistent instance."""
    import subprocess

    env, line = ui_environment(args)
    print(line, file=sys.stderr, flush=True)
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "dagster", "dev", "-h", args.host, "-p", str(args.port)]
    ws = root / "workspace.yaml"
    if ws.exists():
        cmd += ["-w", str(ws)]
    else:
        cmd += ["-m", "homeloc_assets.definitions"]
    # run from the instance folder: from the project root Dagster warns about its dagster.yaml
    return subprocess.call(cmd, cwd=env["DAGSTER_HOME"], env=env)


# -------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``homeloc`` console script."""
    parser = argparse.ArgumentParser(
        prog="homeloc",
        description="homeloc: home countries of social-media users from postgresql-hll "
                    "userday aggregates, and their Local/Tourist classification for a study "
                    "country. `homeloc COMMAND --help` describes each command.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_synth(sub)
    _add_hll(sub)
    _add_ui(sub)
    extra = _explain_parser(sub)
    extra.update(_add_sensitivity(sub))
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["synth"]:  # the generator owns its flags
        from homeloc_assets.synth import synth_main

        return synth_main(argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handlers = {"run": cmd_run, "hll": cmd_hll, "ui": cmd_ui, **extra}
    with _Signals() as signals:
        try:
            code = handlers[args.command](args)
        except (KeyboardInterrupt, CliError, OSError, Exception) as exc:
            code = _report(exc, signals)
        else:
            if signals.received():  # the run stopped early but did not raise
                code = _report(KeyboardInterrupt(), signals)
    return code


INTERRUPTED = "interrupted — run the same command again to resume"


def _report(exc: BaseException, signals: _Signals) -> int:
    """Print one line for ``exc`` and return the exit code (README, "Exit codes")."""
    got = signals.received()
    if got or isinstance(exc, KeyboardInterrupt):
        sig = got or signal.SIGINT
        print(f"homeloc: {INTERRUPTED} ({signal.Signals(sig).name})", file=sys.stderr)
        return 128 + sig
    if isinstance(exc, CliError):
        print(f"homeloc: error: {exc}", file=sys.stderr)
        return exc.code
    if isinstance(exc, OSError):
        print(f"homeloc: error: {os_error_text(exc)}", file=sys.stderr)
        return EXIT_FAILED
    from homeloc_assets.batch_runner import describe_error

    full = _full_disk(os.environ.get("DAGSTER_HOME"))
    if full:  # e.g. SQLite's "disk I/O error" from the Dagster instance on a full disk
        print(f"homeloc: error: {full}: No space left on device ({describe_error(exc)})",
              file=sys.stderr)
        return EXIT_FAILED
    if os.environ.get("HOMELOC_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    print(f"homeloc: error: {describe_error(exc)} (HOMELOC_DEBUG=1 shows the traceback)",
          file=sys.stderr)
    return EXIT_FAILED


def _full_disk(*folders: str | None) -> str | None:
    """The first of ``folders`` whose file system has no free space left, else None."""
    for folder in folders:
        if not folder:
            continue
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        if st.f_bavail * st.f_frsize < (1 << 20):
            return folder
    return None


def os_error_text(exc: OSError) -> str:
    """``<file>: <reason>`` of an OSError (disk full, read-only, not a folder...)."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


class _Signals:
    """Which of SIGINT/SIGTERM arrived while the command ran, whoever handled them.

    Dagster replaces the handlers of both signals while it executes a step
    (and turns either into the same interruption), so the signal number is
    read from Python's wakeup fd, to which every handled signal writes its
    number. SIGTERM outside Dagster interrupts like Ctrl-C does.
    """

    def __enter__(self) -> _Signals:
        self._seen: list[int] = []
        self._old_fd = None
        self._old_term = None
        if threading.current_thread() is not threading.main_thread():
            return self
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def received(self) -> int | None:
        """The first SIGINT or SIGTERM received so far (None: neither)."""
        if self._old_fd is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                while chunk := os.read(self._r, 512):
                    self._seen += [b for b in chunk if b in (signal.SIGINT, signal.SIGTERM)]
        return self._seen[0] if self._seen else None

    def __exit__(self, *exc) -> None:
        if self._old_fd is None:
            return
        signal.set_wakeup_fd(self._old_fd)
        signal.signal(signal.SIGTERM, self._old_term)
        os.close(self._r)
        os.close(self._w)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _add_sensitivity(sub) -> dict:
    """``homeloc sensitivity`` and ``homeloc validate --truth FILE``."""
    from homeloc_assets import sensitivity

    p = sub.add_parser("sensitivity", help="sweep home-rule thresholds over a finished run's homes",
                       description="Sweep min userdays / share / margin over the per-user homes of "
                                   "a finished run (never the input again): table and figure.")
    sensitivity.add_arguments(p)
    v = sub.add_parser("validate", help="accuracy of the home rules against a truth file",
                       description="Like sensitivity, with accuracy, confusion counts and the "
                                   "undetermined share against a truth CSV (user_guid,classification).")
    sensitivity.add_arguments(v)
    v.add_argument("--truth", required=True, help="truth CSV, e.g. the .truth.csv of homeloc synth")

    def run(validate: bool):
        def handler(args) -> int:
            try:
                return sensitivity.main(args, validate=validate)
            except (FileNotFoundError, ValueError, KeyError) as exc:
                raise CliError(str(exc).strip("'\""), EXIT_USAGE) from None
        return handler

    return {"sensitivity": run(False), "validate": run(True)}


def _explain_parser(sub) -> dict:
    """``homeloc explain`` when its module is present."""
    try:
        from homeloc_assets.explain import add_parser, cmd_explain
    except ImportError:
        return {}
    add_parser(sub)
    return {"explain": cmd_explain}


if __name__ == "__main__":
    sys.exit(main())
