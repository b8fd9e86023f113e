"""The PostgreSQL backend: batch-wise, set-based SQL on the hll extension.

Per call, the batch's HLLs go into a temporary table in one ``COPY`` and one
``hll_union_agg ... GROUP BY`` returns every group's estimate: never a round
trip per user. Lost connections are retried with back-off; the password comes
only from the environment and never appears in messages.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from homeloc_assets.backends.base import BackendError
from homeloc_assets.settings import DEFAULTS, PASSWORD_ENV

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install it on the server (Debian: `apt-get install -y postgresql-15-hll`) "
    "and run `CREATE EXTENSION hll;` in the database"
)


#: libpq connection keywords: in a malformed ``key=value`` DSN, an unquoted password
#: with spaces runs until the next of these
_KEYWORDS = ["host", "hostaddr", "port", "dbname", "user", "password", "passfile", "channel_binding", "connect_timeout", "client_encoding", "options", "application_name", "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout", "replication", "gssencmode", "sslmode", "requiressl", "sslcompression", "sslcert", "sslkey", "sslpassword", "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version", "krbsrvname", "gsslib", "service", "target_session_attrs", "load_balance_hosts"]
_KV_PASSWORD = re.compile(
    r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'?|.*?)(?=\s+(?:" + "|".join(_KEYWORDS)
    + r")\s*=|\s*$)", re.IGNORECASE | re.DOTALL)


class DsnError(BackendError):
    """``HOMELOC_PG_DSN`` cannot be parsed (a usage error: exit 2)."""


def split_password(dsn: str) -> tuple[str, str | None]:
    """``(dsn without its password, the password or None)`` of a libpq DSN or URL.

    A password written into ``HOMELOC_PG_DSN`` must not end up in settings,
    resource config (shown in the UI and kept in Dagster's storage) or
    messages: it is cut out here, before libpq sees the DSN, and handed to
    libpq only at connect time. Malformed DSNs are cut defensively: in a URL
    the password runs from the first ``:`` of the user part to the *last*
    ``@`` (so an unencoded ``@``, ``/`` or ``:`` stays in it); in ``key=value``
    form an unquoted password with spaces runs until the next keyword.
    """
    from urllib.parse import unquote

    text = dsn.strip()
    m = re.match(r"(?i)(postgres(?:ql)?://)(.*)$", text, re.DOTALL)
    if m:
        scheme, rest = m.groups()
        at = rest.rfind("@")
        if at < 0:
            return text, None
        userinfo, hostpart = rest[:at], rest[at + 1:]
        user, colon, password = userinfo.partition(":")
        if not colon:
            return text, None
        return f"{scheme}{user}@{hostpart}", unquote(password)
    pm = _KV_PASSWORD.search(text)
    if pm is None:
        return text, None
    raw = pm.group(1)
    if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
        password = re.sub(r"\\(.)", r"\1", raw[1:-1])
    else:
        password = raw.strip("'")
    rest = (text[: pm.start()] + " " + text[pm.end():]).strip()
    return " ".join(rest.split()), password


@dataclass(frozen=True)
class PostgresSettings:
    """Where the hll-enabled PostgreSQL is. The password is read from the environment.

    A password inside ``dsn`` is moved out of it (into a field that is not
    shown) so that ``dsn`` can be displayed and stored.
    """

    dsn: str | None = None
    host: str = DEFAULTS.pg_host
    port: int = DEFAULTS.pg_port
    dbname: str = DEFAULTS.pg_db
    user: str = DEFAULTS.pg_user
    password_env: str = PASSWORD_ENV
    retries: int = DEFAULTS.pg_retries
    backoff_seconds: float = 0.5
    connect_timeout: int = 10
    _dsn_password: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.dsn:
            dsn, password = split_password(self.dsn)
            if password is not None:
                object.__setattr__(self, "dsn", dsn)
                object.__setattr__(self, "_dsn_password", password)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> PostgresSettings:
        """From ``HOMELOC_PG_DSN`` or ``HOMELOC_PG_HOST/PORT/DB/USER`` (read by ``Settings``)."""
        from homeloc_assets.settings import Settings

        return Settings.from_env(env).pg_settings

    def connect_kwargs(self) -> dict[str, object]:
        """Arguments for ``psycopg2.connect``; the password only from the environment."""
        kw: dict[str, object] = {"connect_timeout": self.connect_timeout}
        if self.dsn:
            kw["dsn"] = self.dsn
        else:
            kw.update(host=self.host, port=self.port, dbname=self.dbname, user=self.user)
        password = (
            os.environ.get(self.password_env) or self._dsn_password or self._password_of_env_dsn()
        )
        if password:
            kw["password"] = password
        return kw

    def _password_of_env_dsn(self) -> str | None:
        """The password of ``HOMELOC_PG_DSN`` when this is that DSN with its password taken out."""
        env_dsn = os.environ.get("HOMELOC_PG_DSN")
        if not env_dsn or not self.dsn:
            return None
        dsn, password = split_password(env_dsn)
        return password if dsn == self.dsn else None

    def describe(self) -> str:
        """Where we connect, with any password removed."""
        if self.dsn:
            return redact(self.dsn)
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"


_SECRET_PATTERNS = [
    re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE),
    re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)"),
]


def redact(text: str) -> str:
    """Remove passwords from a DSN, URL or error message."""
    text = _SECRET_PATTERNS[0].sub(r"\1***", text)
    text = _SECRET_PATTERNS[1].sub(r"\1***\3", text)
    secrets = [os.environ.get(PASSWORD_ENV), os.environ.get("PGPASSWORD")]
    env_dsn = os.environ.get("HOMELOC_PG_DSN")
    if env_dsn:
        secrets.append(split_password(env_dsn)[1])
    for secret in filter(None, secrets):
        # the whole password, then any piece of it that a parser may have cut out
        pieces = [secret, *re.split(r"[@/:\s?#&=]+", secret)]
        for piece in sorted(set(pieces), key=len, reverse=True):
            if len(piece) >= 3 or piece == secret:
                text = text.replace(piece, "***")
    return text


#: connection failures that a retry cannot cure: fail at once
_FATAL = re.compile(
    r"password authentication failed|no password supplied|authentication failed|"
    r"role .* does not exist|database .* does not exist|no pg_hba\.conf entry|"
    r"permission denied|invalid (?:dsn|connection option|integer value|sslmode)|"
    r"missing \"=\"|unterminated quoted string|invalid URI|invalid port", re.IGNORECASE)


def _parse_problem(text: str) -> str:
    """What libpq says is wrong with a DSN, without the quoted parts of the DSN it echoes."""
    first = text.strip().splitlines()[0] if text.strip() else "cannot parse it"
    first = re.sub(r'"[^"]*"', '"…"', first)
    return re.sub(r"^invalid dsn:\s*", "", first)


def _server_reason(text: str) -> str:
    """The server's reason of a failed connection (after ``FATAL:``), else the text."""
    m = re.search(r"FATAL:\s*(.*)", text, re.DOTALL)
    return m.group(1) if m else text


def _one_line(text: str) -> str:
    """A server message (ERROR + DETAIL/HINT lines) on one line."""
    return " ".join(text.split()) or "no reason given"


class PostgresBackend:
    """Grouped unions in PostgreSQL's hll extension, one COPY and one query per call."""

    name = "postgres"

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self._conn = None

    # -- connection -------------------------------------------------------
    def _connect(self):
        import psycopg2

        try:
            conn = psycopg2.connect(**self.settings.connect_kwargs())
        except psycopg2.ProgrammingError as exc:  # libpq's parse errors echo the DSN: not shown
            raise DsnError(
                f"HOMELOC_PG_DSN is not a valid libpq connection string "
                f"({_parse_problem(str(exc))}); give key=value pairs or a postgresql:// URL, "
                f"and the password in HOMELOC_PG_PASSWORD"
            ) from None
        except psycopg2.OperationalError as exc:
            text = str(exc)
            if _FATAL.search(text):  # wrong password, role or database: retrying cannot help
                raise BackendError(
                    f"PostgreSQL at {self.settings.describe()} refused the connection: "
                    f"{_one_line(redact(_server_reason(text)))}"
                ) from None
            raise
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'hll'")
            if cur.fetchone() is None:
                # never created behind the user's back: say what to run
                cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'hll'")
                available = cur.fetchone() is not None
                cur.execute("SELECT current_database()")
                db = cur.fetchone()[0]
                conn.close()
                hint = ("run `CREATE EXTENSION hll;` in that database as a role that may "
                        "(homeloc never creates extensions itself)"
                        if available else INSTALL_HINT + " (homeloc never creates extensions itself)")
                raise BackendError(
                    f"the hll extension is not available in database {db!r} at "
                    f"{self.settings.describe()}: {hint}"
                )
            cur.execute(
                "CREATE TEMPORARY TABLE IF NOT EXISTS homeloc_batch (g bigint NOT NULL, h hll NOT NULL)"
            )
        conn.commit()
        return conn

    def _with_retry(self, work):
        import psycopg2

        delay = self.settings.backoff_seconds
        last: Exception | None = None
        for attempt in range(1, self.settings.retries + 2):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                return work(self._conn)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                last = exc
                self._drop()
                if attempt > self.settings.retries:
                    break
                log.warning(
                    "PostgreSQL at %s: %s; retry %d/%d in %.1fs",
                    self.settings.describe(),
                    redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__),
                    attempt,
                    self.settings.retries,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        msg = redact(str(last).strip().splitlines()[0]) if last and str(last).strip() else "no answer"
        raise BackendError(
            f"PostgreSQL at {self.settings.describe()} unreachable after "
            f"{self.settings.retries + 1} attempts: {msg}"
        )

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a dead connection
                self._conn.close()
        self._conn = None

    # -- work -------------------------------------------------------------
    def check(self) -> str:
        """Connect, verify the extension, and say where (no password)."""

        def work(conn):
            with conn.cursor() as cur:
                cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'hll'")
                version = cur.fetchone()[0]
            conn.rollback()
            return f"PostgreSQL hll {version} at {self.settings.describe()}"

        return self._with_retry(work)

    def grouped_cardinality(
        self, blobs: pa.Array, groups: np.ndarray, n_groups: int
    ) -> np.ndarray:
        """``hll_cardinality(hll_union_agg(h)) GROUP BY g`` for one batch."""
        groups = np.asarray(groups, dtype=np.int64)
        if isinstance(blobs, pa.ChunkedArray):
            blobs = blobs.combine_chunks()
        lines = [
            b"%d\t\\\\x%s\n" % (g, v.hex().encode())
            for g, v in zip(groups.tolist(), blobs.to_pylist(), strict=True)
        ]
        payload = b"".join(lines)

        def work(conn):
            with conn.cursor() as cur:
                cur.execute("TRUNCATE homeloc_batch")
                cur.copy_expert("COPY homeloc_batch (g, h) FROM STDIN", io.BytesIO(payload))
                cur.execute(
                    "SELECT g, hll_cardinality(hll_union_agg(h)) FROM homeloc_batch GROUP BY g"
                )
                got = cur.fetchall()
            conn.rollback()
            return got

        rows = self._with_retry(work)
        out = np.zeros(n_groups, dtype=np.float64)
        if rows:
            g = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            c = np.fromiter(
                (np.nan if r[1] is None else r[1] for r in rows), dtype=np.float64, count=len(rows)
            )
            out[g] = c
        return out

    def close(self) -> None:
        """Close the connection."""
        self._drop()

    def __getstate__(self):
        return {"settings": self.settings, "_conn": None}
