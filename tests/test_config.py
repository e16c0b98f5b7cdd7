"""Tests for syncd.config: the TOML contract of DESIGN §5 and its error lines."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from syncd import config as config_module
from syncd.config import (
    AmqpSinkConfig,
    Config,
    ConnectionConfig,
    DaemonConfig,
    DatabaseConfig,
    HttpConfig,
    JsonlSinkConfig,
    MqttSinkConfig,
    NatsSinkConfig,
    PdfsConfig,
    RedisSinkConfig,
    StdoutSinkConfig,
    UnsetVariable,
    WebhookSinkConfig,
    find_config_path,
    interpolate,
    load_config,
    parse_duration,
)
from syncd.errors import ConfigError

SECRET = "s3cr3t-value-never-shown"
ENV = {"SYNCD_CLIENT_SECRET": SECRET}
# Values that no error message may contain, whatever the test.
SECRETS = (SECRET, "hunter2")
EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"

CONNECTION = """
[[connections]]
name = "band"
base_url = "https://inventoryarts.com"
client_id = "cid"
client_secret = "${SYNCD_CLIENT_SECRET}"
"""

Load = Callable[..., Config]
Fail = Callable[..., str]


@pytest.fixture
def load(tmp_path: Path) -> Load:
    """Write TOML text to tmp_path/syncd.toml and load it with the given environ."""

    def write_and_load(text: str, environ: Mapping[str, str] = ENV) -> Config:
        path = tmp_path / "syncd.toml"
        path.write_text(text, encoding="utf-8")
        return load_config(path, environ)

    return write_and_load


@pytest.fixture
def fail(load: Load, tmp_path: Path) -> Fail:
    """Load TOML text that must fail; return the one-line message after checking its form."""

    def load_and_fail(text: str, environ: Mapping[str, str] = ENV) -> str:
        with pytest.raises(ConfigError) as caught:
            load(text, environ)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"config error in {tmp_path / 'syncd.toml'}: ")
        for secret in SECRETS:
            assert secret not in message
        return message.split(": ", 1)[1]

    return load_and_fail


# ----------------------------------------------------------------------------- defaults


def test_minimal_config_gets_documented_defaults(load: Load, tmp_path: Path) -> None:
    """A file with one connection gets every default of DESIGN §5."""
    config = load(CONNECTION)
    assert config.path == tmp_path / "syncd.toml"
    assert config.daemon == DaemonConfig(state_dir=tmp_path / "var")
    assert config.daemon.log_level == "info"
    assert config.daemon.log_format == "auto"
    assert config.daemon.listen == "127.0.0.1:9108"
    assert config.database.url == f"sqlite:///{tmp_path}/var/syncd.db"
    assert config.pdfs == PdfsConfig(
        dir=tmp_path / "var" / "pdfs", concurrency=4, max_bytes=52428800
    )
    assert config.http == HttpConfig(timeout=30, max_attempts=6, retry_after_max=300)
    assert config.sinks == ()


def test_connection_defaults(load: Load) -> None:
    """poll_interval, refresh_token and the OAuth URLs default from base_url."""
    connection = load(CONNECTION).connections[0]
    assert connection.base_url == "https://inventoryarts.com/"
    assert connection.poll_interval == 60
    assert connection.refresh_token is None
    assert connection.authorize_url == "https://inventoryarts.com/oauth/authorize.php"
    assert connection.token_url == "https://inventoryarts.com/oauth/oauth_token.php"
    assert connection.client_secret.get_secret_value() == SECRET


def test_default_database_url_is_absolute_sqlite(load: Load, tmp_path: Path) -> None:
    """The default database URL names an absolute file (four slashes)."""
    url = load(CONNECTION).database.url
    assert url.startswith("sqlite:////")
    assert url == "sqlite:///" + str(tmp_path / "var" / "syncd.db")


def test_models_are_frozen(load: Load) -> None:
    """Config values cannot be changed after loading."""
    config = load(CONNECTION)
    with pytest.raises(ValueError, match="frozen"):
        config.daemon.log_level = "debug"  # type: ignore[misc]


# ------------------------------------------------------------------------ every key parsed


FULL = """
[daemon]
state_dir = "/srv/syncd"
log_level = "debug"
log_format = "json"
listen = "0.0.0.0:9200"

[database]
url = "postgresql+psycopg://syncd@db.internal/syncd"

[pdfs]
dir = "/srv/pdfs"
concurrency = 8
max_bytes = 1000

[http]
timeout = "45s"
max_attempts = 3
retry_after_max = "2m"

[[connections]]
name = "band"
base_url = "http://localhost:8000/api"
client_id = "cid"
client_secret = "${SYNCD_CLIENT_SECRET}"
poll_interval = "5m"
refresh_token = "rt-1"
authorize_url = "https://auth.example.org/authorize"
token_url = "https://auth.example.org/token"
"""


def test_every_daemon_key_is_parsed(load: Load) -> None:
    """[daemon] state_dir, log_level, log_format and listen are read."""
    daemon = load(FULL).daemon
    assert daemon == DaemonConfig(
        state_dir=Path("/srv/syncd"), log_level="debug", log_format="json", listen="0.0.0.0:9200"
    )


def test_database_pdfs_and_http_keys_are_parsed(load: Load) -> None:
    """[database], [pdfs] and [http] keys are read, durations included."""
    config = load(FULL)
    assert config.database == DatabaseConfig(url="postgresql+psycopg://syncd@db.internal/syncd")
    assert config.pdfs == PdfsConfig(dir=Path("/srv/pdfs"), concurrency=8, max_bytes=1000)
    assert config.http == HttpConfig(timeout=45, max_attempts=3, retry_after_max=120)


def test_every_connection_key_is_parsed(load: Load) -> None:
    """Every [[connections]] key is read; explicit OAuth URLs win over the defaults."""
    connection = load(FULL).connections[0]
    assert connection.name == "band"
    assert connection.base_url == "http://localhost:8000/api/"
    assert connection.client_id == "cid"
    assert connection.poll_interval == 300
    assert connection.refresh_token is not None
    assert connection.refresh_token.get_secret_value() == "rt-1"
    assert connection.authorize_url == "https://auth.example.org/authorize"
    assert connection.token_url == "https://auth.example.org/token"


def test_secrets_are_not_shown_in_repr(load: Load) -> None:
    """client_secret and refresh_token are SecretStr, hidden from repr."""
    text = repr(load(FULL))
    assert SECRET not in text
    assert "rt-1" not in text


def test_every_sink_type_is_parsed_with_explicit_values(load: Load, tmp_path: Path) -> None:
    """Each of the seven sink types reads all of its keys."""
    config = load(
        CONNECTION
        + """
[[sinks]]
name = "out"
type = "stdout"
types = ["com.inventoryarts.*"]
[[sinks]]
name = "file"
type = "jsonl"
path = "/srv/events.jsonl"
[[sinks]]
name = "erp"
type = "webhook"
url = "https://erp.example.org/hook"
secret = "whsec_dGVzdGtleQ=="
[[sinks]]
name = "r"
type = "redis"
url = "rediss://:pw@redis.internal:6380/1"
stream = "po"
[[sinks]]
name = "n"
type = "nats"
servers = ["nats://a:4222", "tls://b:4222"]
subject = "po.{type}"
jetstream = false
[[sinks]]
name = "m"
type = "mqtt"
url = "mqtts://broker:8883"
topic = "po/{type}"
qos = 2
[[sinks]]
name = "a"
type = "amqp"
url = "amqps://u:p@rabbit/vhost"
exchange = "po"
routing_key = "po.{type}"
"""
    )
    out, file, erp, redis, nats, mqtt, amqp = config.sinks
    assert out == StdoutSinkConfig(name="out", type="stdout", types=("com.inventoryarts.*",))
    assert file == JsonlSinkConfig(name="file", type="jsonl", path=Path("/srv/events.jsonl"))
    assert isinstance(erp, WebhookSinkConfig)
    assert erp.url == "https://erp.example.org/hook"
    assert erp.secret is not None
    assert erp.secret.get_secret_value() == "whsec_dGVzdGtleQ=="
    assert redis == RedisSinkConfig(
        name="r", type="redis", url="rediss://:pw@redis.internal:6380/1", stream="po"
    )
    assert nats == NatsSinkConfig(
        name="n",
        type="nats",
        servers=("nats://a:4222", "tls://b:4222"),
        subject="po.{type}",
        jetstream=False,
    )
    assert mqtt == MqttSinkConfig(
        name="m", type="mqtt", url="mqtts://broker:8883", topic="po/{type}", qos=2
    )
    assert amqp == AmqpSinkConfig(
        name="a",
        type="amqp",
        url="amqps://u:p@rabbit/vhost",
        exchange="po",
        routing_key="po.{type}",
    )


def test_broker_sinks_have_documented_defaults(load: Load) -> None:
    """redis, nats, mqtt and amqp sinks need only a name and a type."""
    sinks = load(
        CONNECTION
        + "".join(
            f'[[sinks]]\nname = "{kind}"\ntype = "{kind}"\n'
            for kind in ("redis", "nats", "mqtt", "amqp")
        )
    ).sinks
    redis, nats, mqtt, amqp = sinks
    assert redis == RedisSinkConfig(
        name="redis", type="redis", url="redis://127.0.0.1:6379/0", stream="inventoryarts"
    )
    assert nats == NatsSinkConfig(
        name="nats",
        type="nats",
        servers=("nats://127.0.0.1:4222",),
        subject="inventoryarts.{type}",
        jetstream=True,
    )
    assert mqtt == MqttSinkConfig(
        name="mqtt", type="mqtt", url="mqtt://127.0.0.1:1883", topic="inventoryarts/{type}", qos=1
    )
    assert amqp == AmqpSinkConfig(
        name="amqp",
        type="amqp",
        url="amqp://guest:guest@127.0.0.1:5672/",
        exchange="inventoryarts",
        routing_key="{type}",
    )
    assert all(sink.types == () for sink in sinks)


def test_nats_servers_accepts_a_single_string(load: Load) -> None:
    """servers = "nats://host:4222" is read as a one-element tuple."""
    sink = load(CONNECTION + '[[sinks]]\nname = "n"\ntype = "nats"\nservers = "nats://h:4222"\n')
    assert sink.sinks[0] == NatsSinkConfig(name="n", type="nats", servers=("nats://h:4222",))


def test_webhook_secret_empty_becomes_none(load: Load) -> None:
    """An empty webhook secret (e.g. from ${VAR:-}) means unsigned."""
    text = CONNECTION + '[[sinks]]\nname = "w"\ntype = "webhook"\nurl = "https://x.org/"\n'
    sink = load(text + 'secret = "${SYNCD_WEBHOOK_SECRET:-}"\n').sinks[0]
    assert isinstance(sink, WebhookSinkConfig)
    assert sink.secret is None


def test_log_level_is_case_insensitive(load: Load) -> None:
    """log_level = "WARNING" is read as "warning"."""
    assert load('[daemon]\nlog_level = "WARNING"\n' + CONNECTION).daemon.log_level == "warning"


def test_listen_empty_turns_the_server_off(load: Load) -> None:
    """listen = "" is kept as "" (no health/metrics server)."""
    assert load('[daemon]\nlisten = ""\n' + CONNECTION).daemon.listen == ""


@pytest.mark.parametrize("listen", ["localhost:9108", "[::1]:9108", "0.0.0.0:0"])
def test_listen_accepts_host_port(load: Load, listen: str) -> None:
    """listen takes a hostname, an IPv4 or a bracketed IPv6 address with a port."""
    assert load(f'[daemon]\nlisten = "{listen}"\n' + CONNECTION).daemon.listen == listen


def test_numbers_may_come_from_the_environment(load: Load) -> None:
    """An interpolated string like "8" is accepted where an integer is expected."""
    config = load('[pdfs]\nconcurrency = "${CONC:-8}"\n' + CONNECTION)
    assert config.pdfs.concurrency == 8


# --------------------------------------------------------------------------- interpolation


def test_interpolation_replaces_a_set_variable(load: Load) -> None:
    """${VAR} takes the variable's value."""
    config = load(CONNECTION)
    assert config.connections[0].client_secret.get_secret_value() == SECRET


def test_interpolation_of_an_unset_variable_names_it(fail: Fail) -> None:
    """An unset ${VAR} is an error naming the variable, the table and the key."""
    assert fail(CONNECTION, {}) == (
        '${SYNCD_CLIENT_SECRET} is not set ([[connections]] "band" client_secret)'
    )


def test_interpolation_default_when_unset(load: Load) -> None:
    """${VAR:-default} takes the default when VAR is unset."""
    config = load('[daemon]\nlog_level = "${LEVEL:-debug}"\n' + CONNECTION)
    assert config.daemon.log_level == "debug"


def test_interpolation_default_when_empty(load: Load) -> None:
    """${VAR:-default} takes the default when VAR is empty."""
    config = load('[daemon]\nlog_level = "${LEVEL:-debug}"\n' + CONNECTION, {**ENV, "LEVEL": ""})
    assert config.daemon.log_level == "debug"


def test_interpolation_default_ignored_when_set(load: Load) -> None:
    """${VAR:-default} takes VAR when it is set and not empty."""
    config = load(
        '[daemon]\nlog_level = "${LEVEL:-debug}"\n' + CONNECTION, {**ENV, "LEVEL": "error"}
    )
    assert config.daemon.log_level == "error"


def test_interpolation_empty_default_gives_no_refresh_token(load: Load) -> None:
    """refresh_token = "${SYNCD_REFRESH_TOKEN:-}" with the variable unset is None."""
    config = load(CONNECTION + 'refresh_token = "${SYNCD_REFRESH_TOKEN:-}"\n')
    assert config.connections[0].refresh_token is None


def test_interpolation_dollar_dollar_is_a_literal_dollar(load: Load) -> None:
    """$$ becomes $ and is not read as the start of a reference."""
    config = load(CONNECTION.replace("cid", "a$${NOT_A_VAR}b"))
    assert config.connections[0].client_id == "a${NOT_A_VAR}b"


def test_interpolation_applies_inside_lists(load: Load) -> None:
    """Strings inside arrays are interpolated too."""
    text = CONNECTION + '[[sinks]]\nname = "s"\ntype = "stdout"\ntypes = ["${T:-x.*}", "y"]\n'
    assert load(text).sinks[0].types == ("x.*", "y")


def test_interpolation_unset_inside_a_list_names_the_item(fail: Fail) -> None:
    """An unset variable inside an array names the key and the item position."""
    text = CONNECTION + '[[sinks]]\nname = "s"\ntype = "stdout"\ntypes = ["a", "${T}"]\n'
    assert fail(text) == '${T} is not set ([[sinks]] "s" types #2)'


def test_interpolation_never_applies_to_keys(fail: Fail) -> None:
    """A ${VAR} in a key stays as written (and is then an unknown key)."""
    message = fail('[daemon]\n"${KEY}" = "x"\n' + CONNECTION, {**ENV, "KEY": "listen"})
    assert message.startswith("unknown key '${KEY}' in [daemon]")


def test_interpolation_malformed_reference_is_an_error(fail: Fail) -> None:
    """An unterminated ${ is an error naming the table and key, not the value."""
    message = fail(CONNECTION.replace("${SYNCD_CLIENT_SECRET}", "abc${oops"))
    assert message.startswith('[[connections]] "band" client_secret: malformed ${...} reference')
    assert "abc" not in message


def test_interpolate_keeps_a_lone_dollar() -> None:
    """A $ not followed by { or $ is kept as it is."""
    assert interpolate("pa$word $5", {}) == "pa$word $5"


def test_interpolate_set_empty_variable_is_empty() -> None:
    """${VAR} with VAR set to "" gives "" (set, though empty)."""
    assert interpolate("<${V}>", {"V": ""}) == "<>"


def test_interpolate_raises_unset_variable_with_its_name() -> None:
    """interpolate raises UnsetVariable carrying the variable's name."""
    with pytest.raises(UnsetVariable) as caught:
        interpolate("x ${MISSING} y", {})
    assert caught.value.name == "MISSING"


@given(st.text())
def test_interpolate_escaped_text_round_trips(text: str) -> None:
    """Any text with every $ doubled interpolates back to itself."""
    assert interpolate(text.replace("$", "$$"), {}) == text


# ------------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (60, 60.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        (" 2.5m ", 150.0),
        ("10S", 10.0),
    ],
)
def test_parse_duration_accepts_seconds_and_units(value: object, seconds: float) -> None:
    """Numbers are seconds; strings may carry an s, m or h unit."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["fast", "", "5 minutes", "1d", "-5", "5mm", -1, True, None, float("nan"), [60]]
)
def test_parse_duration_rejects_junk(value: object) -> None:
    """Anything else is a ValueError that quotes the value."""
    with pytest.raises(ValueError, match="expected seconds or a duration"):
        parse_duration(value)


@given(st.integers(min_value=0, max_value=10**6))
def test_parse_duration_minutes_are_sixty_seconds(minutes: int) -> None:
    """ "Nm" is always N * 60 seconds."""
    assert parse_duration(f"{minutes}m") == minutes * 60


def test_poll_interval_accepts_a_duration_string(load: Load) -> None:
    """poll_interval = "1h" is 3600 seconds."""
    config = load(CONNECTION + 'poll_interval = "1h"\n')
    assert config.connections[0].poll_interval == 3600


def test_bad_duration_names_table_and_key(fail: Fail) -> None:
    """A junk duration names its table and key and quotes the value."""
    assert fail('[http]\ntimeout = "fast"\n' + CONNECTION) == (
        '[http] timeout: expected seconds or a duration like "90s" or "5m", got \'fast\''
    )


def test_zero_poll_interval_is_an_error(fail: Fail) -> None:
    """poll_interval must be greater than zero."""
    message = fail(CONNECTION + "poll_interval = 0\n")
    assert message == '[[connections]] "band" poll_interval: must be greater than 0, got 0'


# ------------------------------------------------------------------------------------ paths


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """state_dir, pdfs.dir, jsonl path and sqlite file resolve against the file's folder."""
    folder = tmp_path / "etc"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)  # the cwd must not matter
    path = folder / "syncd.toml"
    path.write_text(
        '[daemon]\nstate_dir = "state"\n[database]\nurl = "sqlite:///db/x.db?timeout=5"\n'
        '[pdfs]\ndir = "../pdfs"\n'
        + CONNECTION
        + '[[sinks]]\nname = "f"\ntype = "jsonl"\npath = "events.jsonl"\n',
        encoding="utf-8",
    )
    config = load_config(Path("etc/syncd.toml"), ENV)
    assert config.path == path
    assert config.daemon.state_dir == folder / "state"
    assert config.database.url == f"sqlite:///{folder}/db/x.db?timeout=5"
    assert config.pdfs.dir == folder / ".." / "pdfs"
    assert config.sinks[0] == JsonlSinkConfig(name="f", type="jsonl", path=folder / "events.jsonl")


def test_default_pdfs_dir_and_database_follow_state_dir(load: Load) -> None:
    """pdfs.dir and the sqlite file default to inside a configured state_dir."""
    config = load('[daemon]\nstate_dir = "/srv/s"\n' + CONNECTION)
    assert config.pdfs.dir == Path("/srv/s/pdfs")
    assert config.database.url == "sqlite:////srv/s/syncd.db"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////abs/syncd.db",
        "sqlite://",
        "sqlite:///:memory:",
        "postgresql://syncd:pw@db/syncd",
        "postgresql+psycopg://db/syncd",
    ],
)
def test_database_urls_kept_as_written(load: Load, url: str) -> None:
    """Absolute or in-memory sqlite and postgresql URLs are kept as written."""
    assert load(f'[database]\nurl = "{url}"\n' + CONNECTION).database.url == url


# ------------------------------------------------------------------------ several connections


TWO_CONNECTIONS = (
    CONNECTION
    + """
[[connections]]
name = "shop"
base_url = "https://shop.example.org/"
client_id = "cid2"
client_secret = "other"
poll_interval = 30
"""
)


def test_several_connections_are_read_in_order(load: Load) -> None:
    """Every [[connections]] entry is kept, in file order."""
    config = load(TWO_CONNECTIONS)
    assert [c.name for c in config.connections] == ["band", "shop"]
    assert config.connections[1].poll_interval == 30


def test_connection_none_returns_the_only_one(load: Load) -> None:
    """connection(None) returns the single configured connection."""
    config = load(CONNECTION)
    assert config.connection(None) is config.connections[0]


def test_connection_by_name(load: Load) -> None:
    """connection(name) returns that connection."""
    config = load(TWO_CONNECTIONS)
    assert config.connection("shop") is config.connections[1]


def test_connection_none_with_several_asks_for_a_name(load: Load) -> None:
    """connection(None) with several connections tells the operator to pass --connection."""
    with pytest.raises(ConfigError) as caught:
        load(TWO_CONNECTIONS).connection(None)
    assert str(caught.value) == (
        "several connections are configured (band, shop): pass --connection NAME"
    )


def test_connection_unknown_name_lists_the_names(load: Load) -> None:
    """connection(name) with an unknown name lists the configured ones."""
    with pytest.raises(ConfigError) as caught:
        load(TWO_CONNECTIONS).connection("nope")
    assert str(caught.value) == "unknown connection 'nope' (configured: band, shop)"


def test_connection_model_can_be_built_directly(tmp_path: Path) -> None:
    """Other modules' tests can build a Config from models without a file."""
    connection = ConnectionConfig(name="c", base_url="http://h", client_id="i", client_secret="s")
    config = Config(  # type: ignore[call-arg]  # database and pdfs default from state_dir
        path=tmp_path / "x.toml", daemon=DaemonConfig(state_dir=tmp_path), connections=(connection,)
    )
    assert config.database.url == f"sqlite:///{tmp_path}/syncd.db"
    assert config.pdfs.dir == tmp_path / "pdfs"
    assert connection.token_url == "http://h/oauth/oauth_token.php"


# ------------------------------------------------------------------------------ error lines


def test_unknown_connection_key(fail: Fail) -> None:
    """A misspelt key names itself and its entry (by name)."""
    message = fail(CONNECTION + "pol_interval = 5\n")
    assert message.startswith("unknown key 'pol_interval' in [[connections]] \"band\"")
    assert "poll_interval" in message  # the known keys are listed


def test_unknown_key_in_a_table(fail: Fail) -> None:
    """An unknown key in [daemon] names the key and the table."""
    assert fail("[daemon]\nverbose = true\n" + CONNECTION).startswith(
        "unknown key 'verbose' in [daemon]"
    )


def test_unknown_sink_key_names_the_sink(fail: Fail) -> None:
    """An unknown key in a sink names the sink, not pydantic's union branch."""
    message = fail(CONNECTION + '[[sinks]]\nname = "o"\ntype = "stdout"\npath = "x"\n')
    assert message == "unknown key 'path' in [[sinks]] \"o\" (known keys: name, types, type)"


def test_unknown_sink_type(fail: Fail) -> None:
    """An unknown sink type lists the known ones."""
    assert fail(CONNECTION + '[[sinks]]\nname = "erp"\ntype = "kafka"\n') == (
        "[[sinks]] \"erp\" type: unknown sink type 'kafka' "
        "(one of amqp, jsonl, mqtt, nats, redis, stdout, webhook)"
    )


def test_missing_sink_type(fail: Fail) -> None:
    """A sink without a type says so and lists the types."""
    assert fail(CONNECTION + '[[sinks]]\nname = "erp"\n').startswith(
        "missing required key 'type' in [[sinks]] \"erp\" (one of amqp,"
    )


def test_missing_required_key(fail: Fail) -> None:
    """A missing required key names the key and the entry."""
    assert fail(CONNECTION.replace('client_id = "cid"\n', "")) == (
        "missing required key 'client_id' in [[connections]] \"band\""
    )


def test_missing_jsonl_path(fail: Fail) -> None:
    """A jsonl sink without a path names the key and the sink."""
    assert fail(CONNECTION + '[[sinks]]\nname = "f"\ntype = "jsonl"\n') == (
        "missing required key 'path' in [[sinks]] \"f\""
    )


def test_entry_without_a_name_is_named_by_position(fail: Fail) -> None:
    """An entry without a name is named #N (1-based)."""
    text = CONNECTION + '[[sinks]]\nname = "a"\ntype = "stdout"\n[[sinks]]\ntype = "stdout"\n'
    assert fail(text) == "missing required key 'name' in [[sinks]] #2"


def test_duplicate_connection_name(fail: Fail) -> None:
    """Two connections with one name is an error naming it."""
    assert fail(CONNECTION + CONNECTION) == "duplicate connection name 'band'"


def test_duplicate_sink_name(fail: Fail) -> None:
    """Two sinks with one name is an error naming it."""
    sink = '[[sinks]]\nname = "out"\ntype = "stdout"\n'
    assert fail(CONNECTION + sink + sink) == "duplicate sink name 'out'"


@pytest.mark.parametrize("name", ["Band", "my band", "", "é"])
def test_bad_name(fail: Fail, name: str) -> None:
    """Names must match [a-z0-9_-]+."""
    message = fail(CONNECTION.replace('"band"', f'"{name}"'))
    assert "name: must be lowercase letters, digits, '_' and '-' ([a-z0-9_-]+)" in message


def test_unknown_top_level_table(fail: Fail) -> None:
    """An unknown table is named, with the known ones."""
    assert fail("[deamon]\nx = 1\n" + CONNECTION) == (
        "unknown table [deamon] (one of connections, daemon, database, http, pdfs, sinks)"
    )


def test_unknown_top_level_array_of_tables(fail: Fail) -> None:
    """A misspelt [[connection]] is reported as an unknown table."""
    assert fail(CONNECTION.replace("[[connections]]", "[[connection]]")).startswith(
        "unknown table [[connection]]"
    )


def test_unknown_top_level_key(fail: Fail) -> None:
    """A bare key at the top is reported as such."""
    assert fail('path = "/x"\n' + CONNECTION).startswith("unknown top-level key 'path'")


def test_invalid_toml_gives_the_line(fail: Fail) -> None:
    """A TOML syntax error carries its line number."""
    message = fail(CONNECTION + "poll_interval = = 5\n")
    assert message.startswith("invalid TOML: ")
    assert "line 7" in message


def test_unreadable_file(tmp_path: Path) -> None:
    """A file that cannot be read is one line naming the file."""
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV)
    assert str(caught.value) == (
        f"config error in {path}: cannot read the file: No such file or directory"
    )


def test_not_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 is one line, not a UnicodeDecodeError."""
    path = tmp_path / "syncd.toml"
    path.write_bytes(b'[daemon]\nlisten = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(path, ENV)


def test_table_where_array_of_tables_expected(fail: Fail) -> None:
    """[connections] instead of [[connections]] says to double the brackets."""
    assert fail(CONNECTION.replace("[[connections]]", "[connections]")) == (
        "[connections] must be an array of tables: write [[connections]]"
    )


def test_array_of_tables_where_table_expected(fail: Fail) -> None:
    """[[daemon]] instead of [daemon] is reported."""
    assert fail('[[daemon]]\nlisten = ""\n' + CONNECTION) == (
        "[daemon] must be a table, not an array of tables ([[daemon]])"
    )


def test_scalar_where_array_of_tables_expected(fail: Fail) -> None:
    """sinks = "x" is reported as needing [[sinks]]."""
    assert fail('sinks = "x"\n' + CONNECTION) == (
        "sinks must be an array of tables [[sinks]], got a string"
    )


def test_no_connections(fail: Fail) -> None:
    """A file without [[connections]] is an error."""
    assert fail('[daemon]\nlisten = ""\n') == "at least one [[connections]] entry is required"


def test_bad_literal_names_the_choices(fail: Fail) -> None:
    """A log_level outside the list names the allowed values."""
    assert fail('[daemon]\nlog_level = "verbose"\n' + CONNECTION) == (
        "[daemon] log_level: expected 'debug', 'info', 'warning' or 'error', got 'verbose'"
    )


@pytest.mark.parametrize("listen", ["9108", "host:", "host:99999", "bad host:1", "[nope]:1"])
def test_bad_listen(fail: Fail, listen: str) -> None:
    """listen must be "" or host:port."""
    message = fail(f'[daemon]\nlisten = "{listen}"\n' + CONNECTION)
    assert message.startswith('[daemon] listen: expected "host:port"')


def test_bad_base_url(fail: Fail) -> None:
    """base_url must be http(s)."""
    message = fail(CONNECTION.replace("https://inventoryarts.com", "inventoryarts.com"))
    assert message == (
        '[[connections]] "band" base_url: expected a URL starting with http:// or https://, '
        "got 'inventoryarts.com'"
    )


def test_base_url_with_query_is_rejected(fail: Fail) -> None:
    """base_url cannot carry a query, which joining endpoint paths would break."""
    message = fail(CONNECTION.replace("inventoryarts.com", "inventoryarts.com/?x=1"))
    assert message == (
        '[[connections]] "band" base_url: must not have a query (?...) or a fragment (#...)'
    )


def test_scalar_where_table_expected(fail: Fail) -> None:
    """daemon = 3 is reported as needing a [daemon] table."""
    assert fail("daemon = 3\n" + CONNECTION) == "daemon must be a table [daemon], got an integer"


def test_bad_webhook_url(fail: Fail) -> None:
    """A webhook URL must be http(s)."""
    text = CONNECTION + '[[sinks]]\nname = "w"\ntype = "webhook"\nurl = "ftp://x.org/"\n'
    assert fail(text).startswith(
        '[[sinks]] "w" url: expected a URL starting with http:// or https://'
    )


def test_url_password_is_not_quoted(fail: Fail) -> None:
    """A bad broker URL is quoted without its password."""
    text = CONNECTION + '[[sinks]]\nname = "a"\ntype = "amqp"\nurl = "http://u:hunter2@h/"\n'
    message = fail(text)
    assert (
        message
        == "[[sinks]] \"a\" url: expected a URL starting with amqp:// or amqps://, got 'http://u:***@h/'"
    )


def test_bad_database_scheme(fail: Fail) -> None:
    """An unsupported database scheme is named; the URL (and its password) is not."""
    message = fail('[database]\nurl = "mysql://root:hunter2@db/x"\n' + CONNECTION)
    assert message == (
        "[database] url: expected a sqlite:///, postgresql:// or postgresql+psycopg:// URL, "
        "got scheme 'mysql'"
    )


def test_bad_qos(fail: Fail) -> None:
    """qos must be 0, 1 or 2."""
    text = CONNECTION + '[[sinks]]\nname = "m"\ntype = "mqtt"\nqos = 3\n'
    assert fail(text) == '[[sinks]] "m" qos: must be at most 2, got 3'


def test_boolean_is_not_an_integer(fail: Fail) -> None:
    """concurrency = true is rejected rather than read as 1."""
    assert fail("[pdfs]\nconcurrency = true\n" + CONNECTION) == (
        "[pdfs] concurrency: expected an integer, got true"
    )


def test_zero_concurrency(fail: Fail) -> None:
    """concurrency must be at least 1."""
    assert fail("[pdfs]\nconcurrency = 0\n" + CONNECTION) == (
        "[pdfs] concurrency: must be at least 1, got 0"
    )


def test_wrong_type_for_a_secret_is_described_not_quoted(fail: Fail) -> None:
    """A client_secret of the wrong type is described by its kind only."""
    message = fail(CONNECTION.replace('"${SYNCD_CLIENT_SECRET}"', '["${SYNCD_CLIENT_SECRET}"]'))
    assert message == '[[connections]] "band" client_secret: expected a string, got an array'


def test_empty_client_secret(fail: Fail) -> None:
    """An empty client_secret is an error."""
    message = fail(CONNECTION, {"SYNCD_CLIENT_SECRET": ""})
    assert message == '[[connections]] "band" client_secret: must not be empty'


def test_error_on_secret_entry_never_quotes_secret(fail: Fail) -> None:
    """An error elsewhere in an entry holding a secret never shows that secret."""
    message = fail(CONNECTION + "poll_interval = -1\n")
    assert "poll_interval" in message


def test_validation_error_is_not_chained(load: Load) -> None:
    """The ConfigError hides pydantic's error, whose repr would show raw inputs."""
    with pytest.raises(ConfigError) as caught:
        load(CONNECTION + "poll_interval = 0\n")
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_config_error_exit_code(load: Load) -> None:
    """Config errors exit with code 2 (DESIGN §4)."""
    with pytest.raises(ConfigError) as caught:
        load("")
    assert caught.value.exit_code == 2


# ------------------------------------------------------------------------- finding the file


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A cwd, a system path, an explicit file and an env file, all in tmp_path."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    system = tmp_path / "etc" / "syncd.toml"
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG_PATH", system)
    return {
        "cli": tmp_path / "cli.toml",
        "env": tmp_path / "env.toml",
        "local": cwd / "syncd.toml",
        "system": system,
    }


def _create(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")


def test_find_config_prefers_the_cli_value(places: dict[str, Path]) -> None:
    """--config wins over everything else."""
    _create(*places.values())
    environ = {"SYNCD_CONFIG": str(places["env"])}
    assert find_config_path(str(places["cli"]), environ) == places["cli"]


def test_find_config_then_the_environment(places: dict[str, Path]) -> None:
    """$SYNCD_CONFIG comes next."""
    _create(*places.values())
    assert find_config_path(None, {"SYNCD_CONFIG": str(places["env"])}) == places["env"]


def test_find_config_then_the_working_directory(places: dict[str, Path]) -> None:
    """./syncd.toml comes next, returned as an absolute path."""
    _create(places["local"], places["system"])
    assert find_config_path(None, {}) == places["local"]


def test_find_config_then_etc(places: dict[str, Path]) -> None:
    """/etc/syncd/syncd.toml comes last."""
    _create(places["system"])
    assert find_config_path(None, {"SYNCD_CONFIG": ""}) == places["system"]


def test_find_config_none_found_names_what_was_tried(places: dict[str, Path]) -> None:
    """With no file anywhere the error lists the places tried."""
    with pytest.raises(ConfigError) as caught:
        find_config_path(None, {})
    message = str(caught.value)
    assert str(places["local"]) in message
    assert str(places["system"]) in message
    assert "--config" in message
    assert "$SYNCD_CONFIG" in message


def test_find_config_missing_cli_file_is_an_error(places: dict[str, Path]) -> None:
    """A --config file that does not exist is an error, not a fall-back."""
    _create(places["local"])
    with pytest.raises(ConfigError, match=r"cli\.toml \(from --config\) does not exist"):
        find_config_path(places["cli"], {})


def test_find_config_missing_env_file_is_an_error(places: dict[str, Path]) -> None:
    """A $SYNCD_CONFIG file that does not exist is an error, not a fall-back."""
    _create(places["local"])
    with pytest.raises(ConfigError, match=r"env\.toml \(from \$SYNCD_CONFIG\) does not exist"):
        find_config_path(None, {"SYNCD_CONFIG": str(places["env"])})


# -------------------------------------------------------------------------- the example file


EXAMPLE_ENV = {"SYNCD_CLIENT_SECRET": "secret", "SYNCD_WEBHOOK_SECRET": "whsec_dGVzdA=="}


def test_example_config_loads() -> None:
    """config.example.toml loads, with one sink of every type."""
    config = load_config(EXAMPLE, EXAMPLE_ENV)
    assert [sink.type for sink in config.sinks] == [
        "stdout",
        "jsonl",
        "webhook",
        "redis",
        "nats",
        "mqtt",
        "amqp",
    ]
    assert config.connection(None).client_secret.get_secret_value() == "secret"


def test_example_config_shows_the_defaults() -> None:
    """Every value in the example's tables equals the default it documents."""
    config = load_config(EXAMPLE, EXAMPLE_ENV)
    folder = EXAMPLE.parent
    assert config.daemon == DaemonConfig(state_dir=folder / "var")
    assert config.database.url == f"sqlite:///{folder}/var/syncd.db"
    assert config.pdfs == PdfsConfig(dir=folder / "var" / "pdfs")
    assert config.http == HttpConfig()
    assert config.connections[0].poll_interval == 60
    for sink in config.sinks[3:]:
        assert sink == type(sink)(name=sink.name, type=sink.type)  # type: ignore[call-arg]


def test_example_config_documents_every_key() -> None:
    """Every key of every model appears in the example file."""
    document = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    sections: list[tuple[str, type[BaseModel]]] = [
        ("daemon", DaemonConfig),
        ("database", DatabaseConfig),
        ("pdfs", PdfsConfig),
        ("http", HttpConfig),
    ]
    for section, model in sections:
        assert set(document[section]) == set(model.model_fields), section
    assert set(document["connections"][0]) == set(ConnectionConfig.model_fields)
    sink_models: dict[str, type[BaseModel]] = {
        "stdout": StdoutSinkConfig,
        "jsonl": JsonlSinkConfig,
        "webhook": WebhookSinkConfig,
        "redis": RedisSinkConfig,
        "nats": NatsSinkConfig,
        "mqtt": MqttSinkConfig,
        "amqp": AmqpSinkConfig,
    }
    shown = {sink["type"]: set(sink) for sink in document["sinks"]}
    for kind, model in sink_models.items():
        assert shown[kind] | {"types"} == set(model.model_fields), kind
    assert any("types" in keys for keys in shown.values())


def test_webhook_secret_must_be_whsec_base64(fail: Fail) -> None:
    """A webhook secret that is not whsec_<base64> is a config error that hides the value."""
    message = fail(
        """
[[connections]]
name = "band"
base_url = "https://inventoryarts.com/"
client_id = "id"
client_secret = "s"

[[sinks]]
name = "erp"
type = "webhook"
url = "https://erp.example.org/hook"
secret = "whsec_not*base64!"
"""
    )
    assert '[[sinks]] "erp"' in message
    assert "secret" in message
    assert "not*base64" not in message
