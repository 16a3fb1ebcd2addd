"""Who the PostgreSQL store connects as: the owner role, the application role, their secrets.

Two ways to configure it (docs/postgres.md has the grants):

* ``admin_dsn`` names the owner role (schemas, migrations) and ``dsn`` the
  application role, both made by the operator; or
* one DSN of a superuser (``admin_dsn``, or ``dsn`` alone), as on a developer's
  machine or a test cluster. acme-mt then creates ``acme_mt_owner`` and
  ``acme_mt_app`` itself, keeps their generated passwords in a 0600 secrets file
  (``DATA/store-secrets.json`` unless ``[store] secrets_file`` names another),
  and uses the superuser for nothing else.

Passwords reach the server only as SCRAM-SHA-256 verifiers (RFC 7677, RFC 5802
§3), so neither a DDL statement log nor ``pg_stat_activity`` shows them, and
they never appear on a command line or in our logs.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from acme_mt.config import StoreSettings
from acme_mt.errors import ConfigError

logger = logging.getLogger(__name__)

OWNER_ROLE = "acme_mt_owner"
APP_ROLE = "acme_mt_app"
SECRETS_FILE = "store-secrets.json"
CONNECT_TIMEOUT = 5.0
SCRAM_ITERATIONS = 4096

#: Attributes both managed roles get, and keep, whatever an earlier start left.
_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"

#: The advisory lock (one bigint key) held while the managed roles are made or altered.
ROLES_LOCK = 0x61636D74_726F6C65


@dataclass(frozen=True)
class Login:
    """A DSN without credentials plus the role and password to present."""

    dsn: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_dsn(cls, dsn: str) -> Login:
        """Split credentials out of a ``postgresql://`` DSN, so they are never logged with it."""
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ConfigError("[store] DSNs must be postgresql:// URLs")
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        host = parts.netloc.rpartition("@")[2]
        bare = urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
        return cls(bare, user, password)

    def as_role(self, user: str, password: str) -> Login:
        return Login(self.dsn, user, password)

    def elsewhere(self, dsn: str) -> Login:
        """The same credentials on another database (a dedicated tenant's)."""
        return Login(Login.from_dsn(dsn).dsn, self.user, self.password)

    async def connect(self, **kwargs: Any) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn, **self.connect_kwargs(), **kwargs)

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for asyncpg that override anything the DSN says."""
        kwargs: dict[str, Any] = {"timeout": CONNECT_TIMEOUT}
        if self.user is not None:
            kwargs["user"] = self.user
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs


@dataclass(frozen=True)
class ConnectionPlan:
    """The logins the back end uses; ``owner`` is None where this process may not run DDL."""

    app: Login
    owner: Login | None
    managed: bool


def secrets_path(settings: StoreSettings, data_dir: Path) -> Path:
    return Path(settings.secrets_file) if settings.secrets_file else data_dir / SECRETS_FILE


def read_secrets(path: Path) -> dict[str, Any]:
    """The secrets file's contents, or an empty dict when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the store secrets file {path}: {exc}") from None
    try:
        value = json.loads(text)
    except ValueError:
        raise ConfigError(f"the store secrets file {path} is not JSON") from None
    if not isinstance(value, dict):
        raise ConfigError(f"the store secrets file {path} must hold a JSON object")
    return value


def load_or_create_secrets(path: Path) -> dict[str, Any]:
    """Read the managed roles' passwords, generating them on the first start.

    The file is written whole under a temporary name and linked into place, so
    two processes starting together agree on one set of passwords.
    """
    existing = read_secrets(path)
    if "owner_password" in existing and "app_password" in existing:
        return existing
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = dict(existing)
    fresh.update(owner_password=secrets.token_urlsafe(24), app_password=secrets.token_urlsafe(24))
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(fresh, handle, indent=2)
    try:
        if existing:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    except FileExistsError:
        return read_secrets(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    logger.info("generated passwords for the store roles in %s", path)
    return fresh


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802 §3)."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def plan_connections(settings: StoreSettings, data_dir: Path) -> ConnectionPlan:
    """Decide the owner and application logins, making the managed roles when given a superuser.

    :raises ConfigError: no DSN, or a non-superuser admin DSN without an application DSN.
    """
    admin_dsn = settings.admin_dsn or settings.dsn
    if not admin_dsn:
        raise ConfigError("[store] backend postgres needs a dsn")
    admin = Login.from_dsn(admin_dsn)
    conn = await admin.connect()
    try:
        is_superuser = await conn.fetchval(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        if is_superuser:
            stored = load_or_create_secrets(secrets_path(settings, data_dir))
            owner = admin.as_role(OWNER_ROLE, stored["owner_password"])
            app = admin.as_role(APP_ROLE, stored["app_password"])
            # Processes starting together would otherwise alter the same catalog
            # rows at once, which PostgreSQL refuses ("tuple concurrently updated").
            await conn.execute("SELECT pg_advisory_lock($1)", ROLES_LOCK)
            try:
                await _ensure_role(conn, owner)
                await _ensure_role(conn, app)
                database = quote_ident(await conn.fetchval("SELECT current_database()"))
                await conn.execute(
                    f"GRANT CONNECT, CREATE ON DATABASE {database} TO {OWNER_ROLE};"
                    f" GRANT CONNECT ON DATABASE {database} TO {APP_ROLE}"
                )
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", ROLES_LOCK)
            return ConnectionPlan(app=app, owner=owner, managed=True)
    finally:
        await conn.close()
    if settings.admin_dsn and not settings.dsn:
        raise ConfigError("[store] admin_dsn is not a superuser: set dsn to the application role")
    owner_login = admin if settings.admin_dsn else None
    return ConnectionPlan(app=Login.from_dsn(settings.dsn), owner=owner_login, managed=False)


async def _ensure_role(conn: asyncpg.Connection, login: Login) -> None:
    """Create a managed role, or bring an existing one back to our attributes and password."""
    assert login.user is not None and login.password is not None
    role = quote_ident(login.user)
    verifier = quote_literal(scram_verifier(login.password))
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", login.user)
    if not exists:
        with contextlib.suppress(asyncpg.DuplicateObjectError):
            await conn.execute(f"CREATE ROLE {role} {_ROLE_ATTRIBUTES} PASSWORD {verifier}")
            logger.info("created role %s", login.user)
            return
    await conn.execute(f"ALTER ROLE {role} {_ROLE_ATTRIBUTES}")
    if not await _password_works(login):
        logger.warning("role %s did not accept the stored password; setting it again", login.user)
        await conn.execute(f"ALTER ROLE {role} PASSWORD {verifier}")


async def _password_works(login: Login) -> bool:
    try:
        probe = await login.connect()
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError):
        return False
    await probe.close()
    return True
