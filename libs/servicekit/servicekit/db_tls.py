"""TLS to PostgreSQL: one place for the service's engine, the Alembic migrations and the
kit's command-line tools, from `DATABASE_SSLMODE`, `DATABASE_SSLROOTCERT`, `DATABASE_SSLCERT`
and `DATABASE_SSLKEY` (or libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey` in the query
of `DATABASE_URL`).

The modes are libpq's, without the ones that may fall back to plaintext (`allow`, `prefer`):
`disable` (the local stack's unix socket), `require` (encrypted, the server's certificate
not checked unless a CA file is given, as in libpq), `verify-ca` (signed by the CA),
`verify-full` (signed by the CA and issued for the host name of the URL: what a deployment
uses). A mode that verifies needs the CA file (`system`: the system's CAs, as in libpq).
SQLAlchemy hands every query parameter of the URL to `asyncpg.connect`, which knows none of
libpq's names: they are taken out of the URL here and become the `ssl` context asyncpg is
given.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from servicekit.settings import ServiceSettings

SslMode = Literal["disable", "require", "verify-ca", "verify-full"]
_MODES: tuple[str, ...] = get_args(SslMode)

# libpq's query parameter -> the field of DatabaseTLS and the setting that also sets it.
_URL_PARAMS = {
    "sslmode": ("mode", "DATABASE_SSLMODE"),
    "sslrootcert": ("rootcert", "DATABASE_SSLROOTCERT"),
    "sslcert": ("cert", "DATABASE_SSLCERT"),
    "sslkey": ("key", "DATABASE_SSLKEY"),
}


class DatabaseTLSError(ValueError):
    """The TLS settings of the database are inconsistent, or the server's certificate does
    not verify against them (the text names the setting, never the URL's password)."""


@dataclass(frozen=True)
class DatabaseTLS:
    """How the kit connects to PostgreSQL; the defaults (`disable`) are the local stack's."""

    mode: SslMode = "disable"
    rootcert: str = ""
    cert: str = ""
    key: str = ""

    @classmethod
    def of(cls, settings: ServiceSettings) -> DatabaseTLS:
        """The TLS settings of a service, with those of its `DATABASE_URL` merged in."""
        tls = cls(
            mode=settings.database_sslmode,
            rootcert=settings.database_sslrootcert,
            cert=settings.database_sslcert,
            key=settings.database_sslkey,
        )
        return engine_arguments(settings.database_url, tls)[2] if settings.database_url else tls

    def check(self) -> None:
        """Raise DatabaseTLSError when the settings cannot make a connection (start-up)."""
        self.ssl_context()

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context asyncpg is given; None for `disable`."""
        if self.mode == "disable":
            if self.rootcert or self.cert:
                # A CA or a client certificate says TLS was meant: never connect in plaintext.
                raise DatabaseTLSError(
                    "DATABASE_SSLROOTCERT/DATABASE_SSLCERT are set but DATABASE_SSLMODE is "
                    "disable: set DATABASE_SSLMODE=verify-full (or require, verify-ca)"
                )
            return None
        if bool(self.cert) != bool(self.key):
            raise DatabaseTLSError("DATABASE_SSLCERT and DATABASE_SSLKEY go together")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.mode == "require" and not self.rootcert:
            # libpq's `require`: encrypted, whoever answers (no CA given to check against;
            # with one, libpq checks it as verify-ca does, and so does the branch below).
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            if not self.rootcert:
                raise DatabaseTLSError(
                    f"DATABASE_SSLMODE={self.mode} needs DATABASE_SSLROOTCERT: the CA file "
                    "(PEM) the server's certificate is signed by, or `system` for the "
                    "system's CAs"
                )
            if self.rootcert == "system":
                context.load_default_certs()
            else:
                _load(self.rootcert, "DATABASE_SSLROOTCERT", context.load_verify_locations)
            context.check_hostname = self.mode == "verify-full"
            context.verify_mode = ssl.CERT_REQUIRED
        if self.cert:
            _load(
                self.cert,
                "DATABASE_SSLCERT/DATABASE_SSLKEY",
                lambda path: context.load_cert_chain(path, self.key),
            )
        return context

    def describe(self, exc: BaseException) -> str | None:
        """What a failed connection means for these settings, when TLS is its cause."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (
                f"DATABASE_SSLMODE={self.mode}: the database server's certificate does not "
                f"verify against DATABASE_SSLROOTCERT={self.rootcert}: {exc.verify_message}"
            )
        if isinstance(exc, ssl.SSLError):
            return f"DATABASE_SSLMODE={self.mode}: TLS with the database server failed: {exc}"
        text = str(exc)
        if "no pg_hba.conf entry" in text and "no encryption" in text:
            return (
                f"DATABASE_SSLMODE={self.mode}: the database server accepts only TLS "
                "connections: set DATABASE_SSLMODE=verify-full and DATABASE_SSLROOTCERT"
            )
        return None


def _load(path: str, setting: str, load: Any) -> None:
    try:
        load(path)
    except FileNotFoundError as exc:
        raise DatabaseTLSError(f"{setting} {path} does not exist") from exc
    except OSError as exc:  # ssl.SSLError is an OSError: a file that is not PEM, a bad key
        reason = exc.strerror or str(exc)
        raise DatabaseTLSError(f"{setting} {path} cannot be loaded: {reason}") from exc


def engine_arguments(url: str, tls: DatabaseTLS) -> tuple[str, dict[str, Any], DatabaseTLS]:
    """The URL without libpq's TLS parameters, the `connect_args` for `create_async_engine`,
    and the settings in force (the URL's parameters merged into `tls`; a parameter that
    contradicts a setting is an error, never a silent choice between them)."""
    parsed = make_url(url)
    if "ssl" in parsed.query:
        raise DatabaseTLSError(
            "DATABASE_URL has an `ssl` parameter: use sslmode= (libpq's name) or DATABASE_SSLMODE"
        )
    found: dict[str, str] = {}
    for param, (field, setting) in _URL_PARAMS.items():
        value = parsed.query.get(param)
        if value is None:
            continue
        if not isinstance(value, str):
            raise DatabaseTLSError(f"DATABASE_URL has {param} more than once")
        current = getattr(tls, field)
        if current not in ("", "disable") and current != value:
            raise DatabaseTLSError(
                f"{param}={value} in DATABASE_URL contradicts {setting}={current}"
            )
        found[field] = value
    mode = found.get("mode", tls.mode)
    if mode not in _MODES:
        raise DatabaseTLSError(
            f"sslmode={mode} in DATABASE_URL: use one of {', '.join(_MODES)} "
            "(allow and prefer may fall back to plaintext)"
        )
    merged = replace(
        tls,
        mode=cast(SslMode, mode),
        rootcert=found.get("rootcert", tls.rootcert),
        cert=found.get("cert", tls.cert),
        key=found.get("key", tls.key),
    )
    clean = parsed.difference_update_query(list(_URL_PARAMS))
    context = merged.ssl_context()
    # `ssl=False` for disable: asyncpg's own default would be `prefer`, which tries TLS
    # and falls back to plaintext; the unix socket of the local stack has no TLS anyway.
    connect_args: dict[str, Any] = {"ssl": context if context is not None else False}
    return clean.render_as_string(hide_password=False), connect_args, merged


@contextlib.contextmanager
def explained(tls: DatabaseTLS) -> Iterator[None]:
    """Turn a connection that fails for TLS into a DatabaseTLSError naming the setting (at
    start-up: the migrations are the first connection)."""
    try:
        yield
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None:
            message = tls.describe(cause)
            if message is not None:
                raise DatabaseTLSError(message) from None
            cause = cause.__cause__ or cause.__context__
        raise
