"""The syncd configuration: one TOML file turned into small, typed, frozen models.

DESIGN §5 is the contract. This module is the edge where untrusted text becomes
trusted values: it finds the file (DESIGN §4), reads it with :mod:`tomllib`, replaces
``${VAR}`` references from the environment, fills the defaults that depend on other
keys (``state_dir``, ``base_url``), resolves relative paths against the config file's
folder and validates everything with pydantic. Every problem becomes one
:class:`~syncd.errors.ConfigError` line that names the file, the table and the key,
and never quotes a secret.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from syncd.errors import ConfigError

__all__ = [
    "AmqpSinkConfig",
    "Config",
    "ConnectionConfig",
    "DaemonConfig",
    "DatabaseConfig",
    "HttpConfig",
    "JsonlSinkConfig",
    "MqttSinkConfig",
    "NatsSinkConfig",
    "PdfsConfig",
    "RedisSinkConfig",
    "SinkConfig",
    "StdoutSinkConfig",
    "UnsetVariable",
    "WebhookSinkConfig",
    "check_listen",
    "check_url",
    "find_config_path",
    "interpolate",
    "load_config",
    "normalise_database_url",
    "parse_duration",
    "redact_url",
    "resolve_path",
]

ENV_CONFIG_VAR: Final = "SYNCD_CONFIG"
LOCAL_CONFIG_NAME: Final = "syncd.toml"
# Module attributes rather than literals so tests can point them elsewhere.
SYSTEM_CONFIG_PATH = Path("/etc/syncd/syncd.toml")
DEFAULT_STATE_DIR: Final = "./var"

SECTION_TABLES: Final = ("daemon", "database", "pdfs", "http")
ARRAY_TABLES: Final = ("connections", "sinks")
# Values of these keys are credentials: error messages describe them, never quote them.
SECRET_KEYS: Final = frozenset({"client_secret", "refresh_token", "secret"})

_NAME_PATTERN: Final = re.compile(r"[a-z0-9_-]+")
_DURATION_PATTERN: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)", re.IGNORECASE)
_DURATION_UNITS: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_REFERENCE_PATTERN: Final = re.compile(r"\$(?:(?P<escape>\$)|\{(?P<body>[^}]*)\}|(?P<open>\{))")
_REFERENCE_BODY: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
_DATABASE_SCHEMES: Final = ("sqlite", "postgresql", "postgresql+psycopg")


# --------------------------------------------------------------------------- pure helpers


class UnsetVariable(ValueError):
    """A ``${VAR}`` reference names a variable that is not in the environment."""

    def __init__(self, name: str) -> None:
        super().__init__(f"${{{name}}} is not set")
        self.name = name


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Replace ``${VAR}``, ``${VAR:-default}`` and ``$$`` in ``text``.

    ``${VAR}`` must be set (it may be empty); ``${VAR:-default}`` takes ``default`` when
    VAR is unset or empty; ``$$`` is a literal ``$``. Any other ``$`` stays as it is.
    Raises :class:`UnsetVariable` or :class:`ValueError` (malformed reference).
    """

    def replace(match: re.Match[str]) -> str:
        if match.group("escape"):
            return "$"
        body = match.group("body")
        parsed = _REFERENCE_BODY.fullmatch(body) if body is not None else None
        if parsed is None:
            # Quoting the reference could leak part of a secret that contains "${".
            raise ValueError(
                "malformed ${...} reference (write ${NAME} or ${NAME:-default}; $$ is a literal $)"
            )
        name, default = parsed.group(1), parsed.group(2)
        value = environ.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            raise UnsetVariable(name)
        return value

    return _REFERENCE_PATTERN.sub(replace, text)


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``"90"``, ``"90s"``, ``"5m"`` or ``"1h"``."""
    seconds: float | None = None
    # bool is an int subclass, but `poll_interval = true` is a mistake, not one second.
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_PATTERN.fullmatch(value.strip())
        if match is not None:
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f'expected seconds or a duration like "90s" or "5m", got {value!r}')
    return seconds


def resolve_path(path: Path, base_dir: Path) -> Path:
    """``path`` itself when absolute, else ``path`` taken relative to ``base_dir``."""
    return path if path.is_absolute() else base_dir / path


def normalise_database_url(url: str, base_dir: Path) -> str:
    """Check the scheme and make a SQLite file path absolute (relative to ``base_dir``)."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in _DATABASE_SCHEMES:
        got = f"scheme '{scheme}'" if separator else "no scheme"
        raise ValueError(
            f"expected a sqlite:///, postgresql:// or postgresql+psycopg:// URL, got {got}"
        )
    if scheme != "sqlite" or rest == "":
        return url  # "sqlite://" is an in-memory database
    if not rest.startswith("/"):
        raise ValueError(
            "a sqlite URL has no host: write sqlite:///relative/file.db or sqlite:////absolute.db"
        )
    file_part, question, query = rest[1:].partition("?")
    if file_part in ("", ":memory:") or file_part.startswith("/"):
        return url
    return f"sqlite:///{resolve_path(Path(file_part), base_dir)}{question}{query}"


def redact_url(url: str) -> str:
    """``url`` without its password, query and fragment, which may carry credentials."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if password is not None:
        netloc = netloc.replace(f":{password}@", ":***@", 1)
    query = "..." if parts.query else ""
    return parts._replace(netloc=netloc, query=query, fragment="").geturl()


def check_url(url: str, schemes: tuple[str, ...]) -> str:
    """``url`` unchanged when it has one of ``schemes`` and a host, else ``ValueError``."""
    try:
        parts = urlsplit(url)
        # A unix:// socket URL names a path, not a host.
        valid = parts.scheme in schemes and (bool(parts.hostname) or parts.scheme == "unix")
    except ValueError:
        valid = False
    if not valid:
        expected = " or ".join(f"{scheme}://" for scheme in schemes)
        raise ValueError(f"expected a URL starting with {expected}, got {redact_url(url)!r}")
    return url


def check_listen(value: str) -> str:
    """``value`` when it is ``""`` (off) or ``host:port``, else ``ValueError``."""
    if value == "":
        return value
    host, separator, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        valid_host = _is_ipv6(host[1:-1])
    else:
        valid_host = _HOSTNAME.fullmatch(host) is not None
    if not separator or not valid_host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f'expected "host:port" (e.g. "127.0.0.1:9108") or "", got {value!r}')
    return value


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------ field types and checks


def _base_dir(info: ValidationInfo) -> Path:
    """The folder relative paths resolve against: the config file's, or the cwd."""
    base_dir = info.context.get("base_dir") if isinstance(info.context, dict) else None
    return base_dir if isinstance(base_dir, Path) else Path.cwd()


def _non_empty_path(value: object) -> object:
    # Path("") means ".", which would silently point at the config folder itself.
    if value == "":
        raise ValueError("must not be empty")
    return value


def _resolve_config_path(value: Path, info: ValidationInfo) -> Path:
    return resolve_path(value, _base_dir(info))


def _reject_bool(value: object) -> object:
    # pydantic's lax mode turns `true` into 1; in a config file that is always a mistake.
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {str(value).lower()}")
    return value


def _lowercase(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _empty_to_none(value: object) -> object:
    # "${SYNCD_REFRESH_TOKEN:-}" yields "" when the variable is unset: that means "none".
    return None if value == "" else value


def _check_name(value: str) -> str:
    if _NAME_PATTERN.fullmatch(value) is None:
        raise ValueError(
            f"must be lowercase letters, digits, '_' and '-' ([a-z0-9_-]+), got {value!r}"
        )
    return value


def _check_http_url(value: str) -> str:
    return check_url(value, ("http", "https"))


def _normalise_base_url(value: str) -> str:
    # Endpoint paths are joined onto base_url, so it must end with "/" and carry no
    # query or fragment.
    check_url(value, ("http", "https"))
    parts = urlsplit(value)
    if parts.query or parts.fragment:
        raise ValueError("must not have a query (?...) or a fragment (#...)")
    return value if value.endswith("/") else value + "/"


def _single_to_tuple(value: object) -> object:
    return (value,) if isinstance(value, str) else value


def _check_redis_url(value: str) -> str:
    return check_url(value, ("redis", "rediss", "unix"))


def _check_nats_url(value: str) -> str:
    return check_url(value, ("nats", "tls", "ws", "wss"))


def _check_mqtt_url(value: str) -> str:
    return check_url(value, ("mqtt", "mqtts"))


def _check_amqp_url(value: str) -> str:
    return check_url(value, ("amqp", "amqps"))


ConfigPath = Annotated[Path, BeforeValidator(_non_empty_path), AfterValidator(_resolve_config_path)]
Seconds = Annotated[float, BeforeValidator(parse_duration)]
Count = Annotated[int, BeforeValidator(_reject_bool), Field(ge=1)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
Name = Annotated[str, AfterValidator(_check_name)]
HttpUrlStr = Annotated[str, AfterValidator(_check_http_url)]
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_empty_to_none)]


def _check_webhook_secret(value: SecretStr | None) -> SecretStr | None:
    # Standard Webhooks: "whsec_" and the base64 of the HMAC key (the prefix is optional).
    if value is not None:
        encoded = value.get_secret_value().removeprefix("whsec_").strip()
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not key:
            raise ValueError("must be whsec_ followed by the base64 of the signing key")
    return value


WebhookSecret = Annotated[OptionalSecret, AfterValidator(_check_webhook_secret)]
RedisUrl = Annotated[str, AfterValidator(_check_redis_url)]
NatsUrl = Annotated[str, AfterValidator(_check_nats_url)]
MqttUrl = Annotated[str, AfterValidator(_check_mqtt_url)]
AmqpUrl = Annotated[str, AfterValidator(_check_amqp_url)]


class _Model(BaseModel):
    # hide_input_in_errors keeps secrets out of pydantic's own text should it ever be shown.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


# --------------------------------------------------------------------------------- models


class DaemonConfig(_Model):
    """``[daemon]``: where state lives, how to log, where to serve health and metrics."""

    state_dir: ConfigPath
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], BeforeValidator(_lowercase)
    ] = "info"
    log_format: Annotated[Literal["auto", "json", "console"], BeforeValidator(_lowercase)] = "auto"
    listen: Annotated[str, AfterValidator(check_listen)] = "127.0.0.1:9108"


class DatabaseConfig(_Model):
    """``[database]``: a SQLAlchemy URL; SQLite file paths are always absolute."""

    url: str

    @field_validator("url")
    @classmethod
    def _normalise_url(cls, value: str, info: ValidationInfo) -> str:
        return normalise_database_url(value, _base_dir(info))


class PdfsConfig(_Model):
    """``[pdfs]``: where archived PDFs go and how hard the archiver may work."""

    dir: ConfigPath
    concurrency: Count = 4
    max_bytes: Count = 52_428_800


class HttpConfig(_Model):
    """``[http]``: timeouts and retry limits for calls to the InventoryArts API."""

    timeout: Seconds = Field(default=30.0, gt=0)
    max_attempts: Count = 6
    retry_after_max: Seconds = Field(default=300.0, ge=0)


class ConnectionConfig(_Model):
    """One ``[[connections]]`` entry: an InventoryArts account and its OAuth client."""

    name: Name
    base_url: Annotated[str, AfterValidator(_normalise_base_url)]
    client_id: NonEmptyStr
    client_secret: Annotated[SecretStr, Field(min_length=1)]
    poll_interval: Seconds = Field(default=60.0, gt=0)
    refresh_token: OptionalSecret = None
    # The real defaults derive from base_url (_default_oauth_urls); "" only stands in for
    # them so that callers may leave the keys out, and fails validation if ever used.
    authorize_url: HttpUrlStr = Field(default="", validate_default=True)
    token_url: HttpUrlStr = Field(default="", validate_default=True)
    # Fixed redirect URI for clients registered with one (default: a loopback URI on an
    # ephemeral port, chosen by `syncd auth login`); "" means the default.
    redirect_uri: Annotated[HttpUrlStr | None, BeforeValidator(_empty_to_none)] = None

    @model_validator(mode="before")
    @classmethod
    def _read_client_secret_file(cls, data: Any, info: ValidationInfo) -> Any:
        """``client_secret_file``: the secret read from a file (a systemd credential, say).

        Not a field of its own: once read, the file's text is the client_secret.
        """
        if not isinstance(data, dict) or "client_secret_file" not in data:
            return data
        data = dict(data)
        raw = data.pop("client_secret_file")
        if "client_secret" in data:
            raise ValueError("set client_secret or client_secret_file, not both")
        if not isinstance(raw, str) or raw == "":
            raise ValueError(f"client_secret_file: expected a file path, got {_kind(raw)}")
        path = resolve_path(Path(raw), _base_dir(info))
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(
                f"client_secret_file: cannot read {path} ({error.strerror or error})"
            ) from None
        except UnicodeDecodeError:
            raise ValueError(f"client_secret_file: {path} is not UTF-8 text") from None
        secret = text.rstrip("\r\n")
        if not secret:
            raise ValueError(f"client_secret_file: {path} is empty")
        data["client_secret"] = secret
        return data

    @model_validator(mode="before")
    @classmethod
    def _default_oauth_urls(cls, data: Any) -> Any:
        """Default authorize_url/token_url from base_url (DESIGN §3)."""
        if not isinstance(data, dict) or not isinstance(data.get("base_url"), str):
            return data
        try:
            base_url = _normalise_base_url(data["base_url"])
        except ValueError:
            return data  # base_url's own validator reports it
        return {
            "authorize_url": f"{base_url}oauth/authorize.php",
            "token_url": f"{base_url}oauth/oauth_token.php",
            **data,
        }


class _SinkBase(_Model):
    name: Name
    types: tuple[str, ...] = ()


class StdoutSinkConfig(_SinkBase):
    """A sink that prints each event as one JSON line on standard output."""

    type: Literal["stdout"]


class JsonlSinkConfig(_SinkBase):
    """A sink that appends each event as one JSON line to a file."""

    type: Literal["jsonl"]
    path: ConfigPath


class WebhookSinkConfig(_SinkBase):
    """A sink that POSTs each event to a URL, signed when a secret is set."""

    type: Literal["webhook"]
    url: HttpUrlStr
    secret: WebhookSecret = None
    # Events per POST: 1 sends one CloudEvent per request, more sends a JSON array.
    batch_size: Count = 1
    timeout: Seconds = Field(default=10.0, gt=0)


class RedisSinkConfig(_SinkBase):
    """A sink that appends each event to a Redis stream."""

    type: Literal["redis"]
    url: RedisUrl = "redis://127.0.0.1:6379/0"
    stream: NonEmptyStr = "inventoryarts"
    # Approximate cap on the stream's length (XADD MAXLEN ~); 0 keeps every entry.
    maxlen: Annotated[int, BeforeValidator(_reject_bool), Field(ge=0)] = 0


class NatsSinkConfig(_SinkBase):
    """A sink that publishes each event to NATS (JetStream by default)."""

    type: Literal["nats"]
    servers: Annotated[
        tuple[NatsUrl, ...], BeforeValidator(_single_to_tuple), Field(min_length=1)
    ] = ("nats://127.0.0.1:4222",)
    subject: NonEmptyStr = "inventoryarts.{type}"
    jetstream: bool = True
    # The JetStream stream created over the subject's prefix when none covers it yet.
    stream: NonEmptyStr = "INVENTORYARTS"


class MqttSinkConfig(_SinkBase):
    """A sink that publishes each event to an MQTT broker."""

    type: Literal["mqtt"]
    url: MqttUrl = "mqtt://127.0.0.1:1883"
    topic: NonEmptyStr = "inventoryarts/{type}"
    qos: Annotated[int, BeforeValidator(_reject_bool), Field(ge=0, le=2)] = 1


class AmqpSinkConfig(_SinkBase):
    """A sink that publishes each event to an AMQP 0-9-1 exchange (RabbitMQ)."""

    type: Literal["amqp"]
    url: AmqpUrl = "amqp://guest:guest@127.0.0.1:5672/"
    exchange: str = "inventoryarts"
    routing_key: NonEmptyStr = "{type}"


SinkConfig = Annotated[
    StdoutSinkConfig
    | JsonlSinkConfig
    | WebhookSinkConfig
    | RedisSinkConfig
    | NatsSinkConfig
    | MqttSinkConfig
    | AmqpSinkConfig,
    Field(discriminator="type"),
]

_SINK_MODELS: Final[dict[str, type[_SinkBase]]] = {
    "stdout": StdoutSinkConfig,
    "jsonl": JsonlSinkConfig,
    "webhook": WebhookSinkConfig,
    "redis": RedisSinkConfig,
    "nats": NatsSinkConfig,
    "mqtt": MqttSinkConfig,
    "amqp": AmqpSinkConfig,
}
SINK_TYPES: Final = tuple(sorted(_SINK_MODELS))
_SECTION_MODELS: Final[dict[str, type[BaseModel]]] = {
    "daemon": DaemonConfig,
    "database": DatabaseConfig,
    "pdfs": PdfsConfig,
    "http": HttpConfig,
}


class Config(_Model):
    """The whole configuration file, validated, with every default filled in."""

    path: ConfigPath
    daemon: DaemonConfig
    database: DatabaseConfig
    pdfs: PdfsConfig
    http: HttpConfig = Field(default_factory=HttpConfig)
    connections: tuple[ConnectionConfig, ...] = Field(min_length=1)
    sinks: tuple[SinkConfig, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_state_dir(cls, data: Any, info: ValidationInfo) -> Any:
        """Fill state_dir, database.url and pdfs.dir, which default relative to each other."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        daemon = data.get("daemon", {})
        state_dir: Path | None = None
        if isinstance(daemon, DaemonConfig):
            state_dir = daemon.state_dir
        elif isinstance(daemon, dict):
            daemon = data["daemon"] = {"state_dir": DEFAULT_STATE_DIR, **daemon}
            raw_state_dir = daemon["state_dir"]
            if isinstance(raw_state_dir, str | Path) and str(raw_state_dir):
                state_dir = resolve_path(Path(raw_state_dir), _base_dir(info))
        if state_dir is not None:
            database_url = f"sqlite:///{state_dir / 'syncd.db'}"
            data["database"] = _with_default(data.get("database"), "url", database_url)
            data["pdfs"] = _with_default(data.get("pdfs"), "dir", state_dir / "pdfs")
        return data

    @model_validator(mode="after")
    def _names_are_unique(self) -> Config:
        for kind, names in (
            ("connection", [connection.name for connection in self.connections]),
            ("sink", [sink.name for sink in self.sinks]),
        ):
            seen: set[str] = set()
            for name in names:
                if name in seen:
                    raise ValueError(f"duplicate {kind} name '{name}'")
                seen.add(name)
        return self

    def connection(self, name: str | None) -> ConnectionConfig:
        """The connection called ``name``; with ``None``, the only one configured."""
        names = ", ".join(connection.name for connection in self.connections)
        if name is None:
            if len(self.connections) == 1:
                return self.connections[0]
            raise ConfigError(
                f"several connections are configured ({names}): pass --connection NAME"
            )
        for connection in self.connections:
            if connection.name == name:
                return connection
        raise ConfigError(f"unknown connection '{name}' (configured: {names})")


def _with_default(section: object, key: str, value: object) -> object:
    """``section`` with ``key`` set to ``value`` unless given; non-tables pass through."""
    if section is None:
        return {key: value}
    if isinstance(section, dict) and key not in section:
        return {**section, key: value}
    return section


# ------------------------------------------------------------------------- finding, loading


def find_config_path(cli_value: str | Path | None, environ: Mapping[str, str]) -> Path:
    """The config file to use (DESIGN §4): ``--config``, ``$SYNCD_CONFIG``, ./syncd.toml, /etc.

    An explicit choice (``--config`` or ``$SYNCD_CONFIG``) that does not exist is an
    error rather than a reason to fall back: the operator asked for that file.
    """
    if cli_value is not None and str(cli_value) != "":
        return _existing(Path(cli_value), "--config")
    if environ.get(ENV_CONFIG_VAR):
        return _existing(Path(environ[ENV_CONFIG_VAR]), f"${ENV_CONFIG_VAR}")
    candidates = [Path.cwd() / LOCAL_CONFIG_NAME, SYSTEM_CONFIG_PATH]
    for path in candidates:
        if path.is_file():
            return path.absolute()
    tried = ", ".join(str(path) for path in candidates)
    raise ConfigError(
        f"no config file found (tried {tried}): pass --config FILE or set ${ENV_CONFIG_VAR}"
    )


def _existing(path: Path, source: str) -> Path:
    """``path`` made absolute, or ConfigError when the operator named a missing file."""
    if not path.exists():
        raise ConfigError(f"config file {path} (from {source}) does not exist")
    return path.absolute()


def load_config(path: Path, environ: Mapping[str, str]) -> Config:
    """Read, interpolate and validate the config file at ``path``.

    Raises :class:`ConfigError` with one line naming the file, the table and the key.
    """
    path = Path(path).absolute()
    try:
        document = _read_toml(path)
        _check_layout(document)
        document = _interpolate_document(document, environ)
        try:
            return Config.model_validate(
                {**document, "path": path}, context={"base_dir": path.parent}
            )
        except ValidationError as error:
            problem = _describe_validation_error(error, document)
    except _Problem as error:
        problem = str(error)
    # `from None`: a chained ValidationError would print the raw inputs under --debug.
    message = f"config error in {path}: {problem}"
    raise ConfigError(" ".join(message.splitlines())) from None


class _Problem(Exception):
    """One config problem, worded without the file name (load_config prefixes it)."""


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise _Problem(f"cannot read the file: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Problem(f"not valid UTF-8 (byte {error.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # tomllib's message carries "(at line N, column M)".
        raise _Problem(f"invalid TOML: {error}") from None


def _check_layout(document: Mapping[str, Any]) -> None:
    """Reject unknown top-level names and tables of the wrong shape before validation."""
    for key, value in document.items():
        if key in SECTION_TABLES:
            if isinstance(value, list):
                raise _Problem(f"[{key}] must be a table, not an array of tables ([[{key}]])")
            if not isinstance(value, dict):
                raise _Problem(f"{key} must be a table [{key}], got {_kind(value)}")
        elif key in ARRAY_TABLES:
            if isinstance(value, dict):
                raise _Problem(f"[{key}] must be an array of tables: write [[{key}]]")
            if not isinstance(value, list):
                raise _Problem(f"{key} must be an array of tables [[{key}]], got {_kind(value)}")
            for index, entry in enumerate(value):
                if not isinstance(entry, dict):
                    raise _Problem(f"[[{key}]] #{index + 1} must be a table, got {_kind(entry)}")
        else:
            known = ", ".join(sorted((*SECTION_TABLES, *ARRAY_TABLES)))
            shown = f"[[{key}]]" if isinstance(value, list) else f"[{key}]"
            what = f"table {shown}" if isinstance(value, dict | list) else f"top-level key '{key}'"
            raise _Problem(f"unknown {what} (one of {known})")
    if not document.get("connections"):
        raise _Problem("at least one [[connections]] entry is required")


def _interpolate_document(
    document: Mapping[str, Any], environ: Mapping[str, str]
) -> dict[str, Any]:
    """The document with ``${VAR}`` replaced in every string value (never in keys)."""
    result: dict[str, Any] = {}
    for section, value in document.items():
        if section in ARRAY_TABLES:
            entries = []
            for index, entry in enumerate(value):
                label = f"[[{section}]] #{index + 1}"
                # Name the entry by its interpolated name, so interpolate that first.
                name = _interpolate_value(entry.get("name"), environ, f"{label} name")
                if isinstance(name, str):
                    label = f"[[{section}]] {_quote(name)}"
                entries.append(_interpolate_table(entry, environ, label))
            result[section] = entries
        else:
            result[section] = _interpolate_table(value, environ, f"[{section}]")
    return result


def _interpolate_table(table: Mapping[str, Any], environ: Mapping[str, str], label: str) -> Any:
    return {
        key: _interpolate_value(value, environ, f"{label} {key}") for key, value in table.items()
    }


def _interpolate_value(value: Any, environ: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        try:
            return interpolate(value, environ)
        except UnsetVariable as error:
            raise _Problem(f"{error} ({where})") from None
        except ValueError as error:
            raise _Problem(f"{where}: {error}") from None
    if isinstance(value, list):
        return [
            _interpolate_value(item, environ, f"{where} #{index + 1}")
            for index, item in enumerate(value)
        ]
    if isinstance(value, dict):
        return _interpolate_table(value, environ, where)
    return value


# ------------------------------------------------------------------ validation error lines


def _describe_validation_error(error: ValidationError, document: Mapping[str, Any]) -> str:
    """One line for the first (most telling) error pydantic found."""
    details = error.errors(include_url=False)
    # A misspelt key also makes its right spelling "missing"; the unknown key says more.
    details.sort(key=lambda detail: detail["type"] != "extra_forbidden")
    return _describe_error(details[0], document)


def _describe_error(detail: ErrorDetails, document: Mapping[str, Any]) -> str:
    table, keys, model = _locate(detail["loc"], document)
    kind = detail["type"]
    if kind == "extra_forbidden" and keys:
        known = f" (known keys: {', '.join(model.model_fields)})" if model else ""
        return f"unknown key '{keys[-1]}' in {_join(table, keys[:-1])}{known}"
    if kind == "missing" and keys:
        return f"missing required key '{keys[-1]}' in {_join(table, keys[:-1])}"
    if kind == "union_tag_not_found":
        return f"missing required key 'type' in {table} (one of {', '.join(SINK_TYPES)})"
    if kind == "union_tag_invalid":
        tag = (detail.get("ctx") or {}).get("tag")
        return (
            f"{_join(table, ['type'])}: unknown sink type '{tag}' (one of {', '.join(SINK_TYPES)})"
        )
    if kind == "too_short" and detail["loc"] == ("connections",):
        return "at least one [[connections]] entry is required"
    secret = any(key in SECRET_KEYS for key in keys)
    text = _explain(detail, secret=secret)
    where = _join(table, keys)
    return f"{where}: {text}" if where else text


def _locate(
    loc: tuple[int | str, ...], document: Mapping[str, Any]
) -> tuple[str, list[str], type[BaseModel] | None]:
    """Split a pydantic location into a table label, the key path and the model there."""
    if not loc:
        return "", [], None
    section = str(loc[0])
    rest = list(loc[1:])
    model: type[BaseModel] | None
    if section in ARRAY_TABLES and rest and isinstance(rest[0], int):
        index = int(rest.pop(0))
        table = f"[[{section}]] {_entry_label(document.get(section), index)}"
        if section == "sinks":
            # The discriminated union puts the sink type into the location: drop it.
            model = _SINK_MODELS.get(str(rest[0])) if rest else None
            if model is not None:
                rest.pop(0)
        else:
            model = ConnectionConfig
    elif section in ARRAY_TABLES or section in SECTION_TABLES:
        table = f"[[{section}]]" if section in ARRAY_TABLES else f"[{section}]"
        model = _SECTION_MODELS.get(section)
    else:
        return "", [str(part) for part in loc], Config
    keys: list[str] = []
    for part in rest:
        if isinstance(part, int) and keys:
            keys[-1] = f"{keys[-1]} #{part + 1}"
        else:
            keys.append(str(part))
    return table, keys, model


def _entry_label(entries: object, index: int) -> str:
    """An array-of-tables entry by its quoted name, else by its position (#1, #2)."""
    entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
    name = entry.get("name") if isinstance(entry, dict) else None
    return _quote(name) if isinstance(name, str) else f"#{index + 1}"


def _join(table: str, keys: list[str]) -> str:
    return " ".join([table, *keys]).strip()


_EXPECTED: Final = {
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "tuple_type": "expected an array",
    "list_type": "expected an array",
    "path_type": "expected a path",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "dict_type": "expected a table",
}


def _explain(detail: ErrorDetails, *, secret: bool) -> str:
    """pydantic's complaint about one value, in the words of a config file."""
    kind = detail["type"]
    ctx = detail.get("ctx") or {}
    value = detail.get("input")
    if kind in _EXPECTED:
        return f"{_EXPECTED[kind]}, got {_describe_input(value, secret=secret)}"
    if kind == "value_error" and isinstance(ctx.get("error"), Exception):
        return str(ctx["error"])  # our own validators' wording, which quotes no secret
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}, got {_describe_input(value, secret=secret)}"
    if kind in ("string_too_short", "too_short") and ctx.get("min_length") == 1:
        return "must not be empty"
    bounds = {
        "greater_than": ("greater than", "gt"),
        "greater_than_equal": ("at least", "ge"),
        "less_than": ("less than", "lt"),
        "less_than_equal": ("at most", "le"),
    }
    if kind in bounds:
        words, bound = bounds[kind]
        limit = _describe_input(ctx.get(bound), secret=False)
        return f"must be {words} {limit}, got {_describe_input(value, secret=secret)}"
    return detail["msg"][:1].lower() + detail["msg"][1:]


def _describe_input(value: object, *, secret: bool) -> str:
    """The offending value, quoted when harmless, else only its TOML kind."""
    if secret or isinstance(value, dict | list | tuple):
        return _kind(value)
    if isinstance(value, str):
        text = redact_url(value) if "://" in value else value
        return repr(text if len(text) <= 80 else text[:77] + "...")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # pydantic turned the 0 the operator wrote into 0.0
    if isinstance(value, int | float):
        return repr(value)
    return str(value)  # a TOML date or time


def _kind(value: object) -> str:
    """The TOML word for the type of ``value``."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time" if value is not None else "nothing"


def _quote(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)


def load_listen(path: Path, environ: Mapping[str, str]) -> str:
    """Only ``[daemon] listen``, for ``syncd health``: a probe must not need the secrets
    that the rest of the file names."""
    try:
        daemon = _read_toml(path).get("daemon", {})
        value = daemon.get("listen", DaemonConfig.model_fields["listen"].default)
        if not isinstance(value, str):
            raise _Problem("[daemon] listen: expected a string")
        try:
            return check_listen(interpolate(value, environ))
        except (UnsetVariable, ValueError) as error:
            raise _Problem(f"[daemon] listen: {error}") from None
    except _Problem as problem:
        raise ConfigError(f"config error in {path}: {problem}") from None
