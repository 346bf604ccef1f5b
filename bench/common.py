"""Shared helpers for the benchmarks: statistics, verdicts, brokers on free ports, progress.

Benchmarks are not tests. Each one measures the code under test and, in the same run on the same
machine, the reference it is held against, then prints both and their ratio. This machine is a
noisy shared 2-vCPU VM (see ../shared/reference/limits.md), so absolute times drift from run to
run; ratios measured in the same run, with cases interleaved round-robin, are what we compare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)

# The 66-byte Scalar the issue and limits.md section 4 use.
SCALAR_PAYLOAD = b'{"Timestamp":1504110640,"Value":240.0,"Valid":true,"ToStore":true}'


@dataclass(frozen=True)
class Options:
    """Command-line options every benchmark receives."""

    quick: bool = False
    runs: int | None = None  # None: the benchmark's own default
    duration: float | None = None  # bench_runtime_memory sampling window (s)
    mode: str | None = None  # restrict bench_ingest to one marketplace mode


@dataclass(frozen=True)
class Summary:
    """Median, min and max of a few runs."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def runs(self) -> int:
        return len(self.values)

    def fmt(self, digits: int = 0, unit: str = "") -> str:
        """Render as 'median (min-max, n runs)'."""
        u = f" {unit}" if unit else ""
        return f"{self.median:,.{digits}f}{u} ({self.low:,.{digits}f}-{self.high:,.{digits}f}, {self.runs} runs)"


@dataclass
class Verdict:
    """The targets one benchmark checks, each passed or missed."""

    name: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, target: str, passed: bool, detail: str) -> None:
        """Record one target and whether it was met."""
        self.checks.append((target, passed, detail))

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def show(self) -> int:
        """Print the verdict table; return the exit status (0 all met, 1 a target missed)."""
        table = Table(title=f"{self.name}: targets", show_lines=False)
        table.add_column("target")
        table.add_column("result")
        table.add_column("measured")
        for target, ok, detail in self.checks:
            table.add_row(target, "[green]PASS[/]" if ok else "[red]FAIL[/]", detail)
        if not self.checks:
            table.add_row("(nothing measured)", "[red]FAIL[/]", "")
        console.print(table)
        return 0 if self.passed else 1


def machine_line() -> str:
    """One line describing the machine and its load right now."""
    load = os.getloadavg()
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    )


def header(title: str, what: str) -> None:
    """Print the benchmark's title, what it measures and the machine line."""
    console.rule(f"[bold]{title}")
    console.print(what)
    console.print(f"[dim]{machine_line()}")


def progress() -> Progress:
    """A rich progress bar for long steps."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


# -- network ---------------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """Tell whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll condition until true; raise TimeoutError naming what was awaited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout:g} s")
        time.sleep(interval)


def mosquitto_binary() -> str | None:
    """Path of the mosquitto executable, or None."""
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


@contextlib.contextmanager
def plain_mosquitto(port: int | None = None) -> Iterator[int]:
    """Run /usr/sbin/mosquitto on a free 127.0.0.1 port as in limits.md (anonymous, unlimited queue)."""
    binary = mosquitto_binary()
    if binary is None:
        raise RuntimeError("mosquitto binary not found (apt-get install mosquitto)")
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="gridhub-bench-mosq-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"
            "log_dest none\n"
        )
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: port_open("127.0.0.1", port), 10, f"mosquitto on port {port}")
            yield port
        finally:
            stop_process(proc)


@contextlib.contextmanager
def plain_amqtt(port: int | None = None) -> Iterator[int]:
    """Run the amqtt broker in its own process on a free port, as in limits.md section 2."""
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="gridhub-bench-amqtt-") as tmp:
        conf = Path(tmp) / "amqtt.yaml"
        conf.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )
        amqtt = Path(sys.executable).with_name("amqtt")
        proc = subprocess.Popen([str(amqtt), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: port_open("127.0.0.1", port), 20, f"amqtt on port {port}")
            yield port
        finally:
            stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate one process we started (SIGTERM, then SIGKILL)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def python_module(module: str, args: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start `python -m module args` from the repository root with the bench package importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), str(REPO_ROOT / "src"), env.get("PYTHONPATH")) if p)
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-m", module, *args], cwd=str(REPO_ROOT), env=env, **kwargs
    )


def ratio(a: float, b: float) -> float:
    """a / b, or 0 when b is 0."""
    return a / b if b else 0.0


# -- plain paho-mqtt publisher and subscriber processes (limits.md section 1 method) ----------------
#
# Run as ``python -m bench.common publish|subscribe ...``. Each prints ``ready`` once connected (and
# subscribed); the publisher then waits for a line on stdin. Each ends with one JSON line of
# CLOCK_MONOTONIC times, which are comparable across processes on Linux.


def _client(client_id: str, username: str | None, password: str | None) -> paho.Client:
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if username:
        client.username_pw_set(username, password or None)
    return client


def _connect(client: paho.Client, host: str, port: int) -> None:
    connected = threading.Event()
    failure: list[str] = []

    def on_connect(c: paho.Client, u: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            failure.append(str(reason))
        connected.set()

    client.on_connect = on_connect
    client.connect(host, port, keepalive=60)
    client.loop_start()
    if not connected.wait(15) or failure:
        raise SystemExit(f"cannot connect to {host}:{port}: {failure or 'no CONNACK'}")


def publish(args: argparse.Namespace) -> None:
    """Send N messages as fast as paho takes them; report start and last-PUBACK times."""
    client = _client(args.client_id, args.username, args.password)
    acked = 0
    done = threading.Event()
    last_ack = [0.0]

    def on_publish(c: paho.Client, u: object, mid: int, reason: object, props: object) -> None:
        nonlocal acked
        acked += 1
        if acked >= args.count:
            last_ack[0] = time.monotonic()
            done.set()

    client.on_publish = on_publish
    _connect(client, args.host, args.port)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    print(json.dumps({"start": start}), flush=True)
    for _ in range(args.count):
        client.publish(args.topic, SCALAR_PAYLOAD, qos=args.qos)
    sent = time.monotonic()
    ok = done.wait(args.timeout)
    print(json.dumps({"start": start, "sent": sent, "acked": last_ack[0], "acks": acked, "complete": ok}), flush=True)
    client.disconnect()
    client.loop_stop()


def subscribe(args: argparse.Namespace) -> None:
    """Count messages on a topic filter; report first and last receive times."""
    client = _client(args.client_id, args.username, args.password)
    received = 0
    first = [0.0]
    last = [0.0]
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        nonlocal received
        received += 1
        now = time.monotonic()
        if received == 1:
            first[0] = now
        last[0] = now
        if received >= args.count:
            done.set()

    def on_subscribe(c: paho.Client, u: object, mid: int, codes: list[ReasonCode], props: Properties | None) -> None:
        subscribed.set()

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    _connect(client, args.host, args.port)
    client.subscribe(args.topic, args.qos)
    if not subscribed.wait(15):
        raise SystemExit("no SUBACK")
    print("ready", flush=True)
    ok = done.wait(args.timeout)
    print(json.dumps({"first": first[0], "last": last[0], "received": received, "complete": ok}), flush=True)
    client.disconnect()
    client.loop_stop()


def watch(args: argparse.Namespace) -> None:
    """Poll a table's committed rows (a separate read-only reader); report when ``count`` is reached.

    Runs in its own process so that polling takes no GIL time from the process under test.
    Counts by ``max(rowid)``, which equals the row count of a fresh AUTOINCREMENT table.
    """
    database = Path(args.database)
    print("ready", flush=True)
    deadline = time.monotonic() + args.timeout
    con: sqlite3.Connection | None = None
    n = 0
    while time.monotonic() < deadline:
        try:
            if con is None and database.exists():
                con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=0.5)
            if con is not None:
                n = int(con.execute(f'SELECT max(rowid) FROM "{args.table}"').fetchone()[0] or 0)
        except sqlite3.Error:
            n = 0  # table not created yet
        if n >= args.count:
            print(json.dumps({"done": time.monotonic(), "committed": n}), flush=True)
            return
        time.sleep(0.005)
    print(json.dumps({"done": 0.0, "committed": n}), flush=True)


def client_main() -> None:
    """Parse the role and run it."""
    parser = argparse.ArgumentParser(prog="python -m bench.common")
    parser.add_argument("role", choices=["publish", "subscribe", "watch"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--topic", default="")
    parser.add_argument("--database", help="watch: the SQLite file")
    parser.add_argument("--table", help="watch: the table whose committed rows are counted")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--client-id", default="")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    {"publish": publish, "subscribe": subscribe, "watch": watch}[args.role](args)


@dataclass(frozen=True)
class Credentials:
    """Username and password a benchmark client connects with (None: anonymous)."""

    username: str | None = None
    password: str | None = None

    def args(self) -> list[str]:
        out: list[str] = []
        if self.username:
            out += ["--username", self.username]
        if self.password:
            out += ["--password", self.password]
        return out


class ClientProcess:
    """One `python -m bench.common publish|subscribe` process, driven over its stdin/stdout."""

    def __init__(
        self,
        role: str,
        port: int,
        topic: str,
        count: int,
        creds: Credentials,
        timeout: float,
        extra: Sequence[str] = (),
    ) -> None:
        client_id = creds.username or f"bench-{role}-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
        self.proc = python_module(
            "bench.common",
            [role, "--port", str(port), "--topic", topic, "--count", str(count), "--client-id", client_id,
             "--timeout", str(timeout), *creds.args(), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip

    def ready(self, timeout: float = 20.0) -> None:
        """Wait for the 'ready' line."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if line != "ready":
            self.proc.wait(timeout)
            raise RuntimeError(f"benchmark client did not start (said {line!r}, exit {self.proc.returncode})")

    def go(self) -> None:
        """Tell the publisher to start."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def started(self) -> float:
        """Read the publisher's start time (CLOCK_MONOTONIC), printed as it begins sending."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        try:
            return float(json.loads(line)["start"])
        except (ValueError, KeyError, TypeError):
            raise RuntimeError(f"publisher did not report its start (said {line!r})") from None

    def result(self) -> dict[str, float]:
        """Read the final JSON line and reap the process."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        self.proc.wait(30)
        if not line:
            raise RuntimeError(f"benchmark client ended without a result (exit {self.proc.returncode})")
        out: dict[str, float] = json.loads(line)
        return out

    def close(self) -> None:
        """Stop the process if it is still running."""
        stop_process(self.proc, timeout=3)


def raw_paho_qos1(
    port: int, topic: str, count: int, pub: Credentials, sub: Credentials, timeout: float
) -> tuple[float, int]:
    """One paho publisher -> one paho subscriber at QoS 1; return (end-to-end msg/s, messages received).

    When messages are missing after ``timeout`` the rate is of those received, up to the last one.
    """
    subscriber = ClientProcess("subscribe", port, topic, count, sub, timeout)
    publisher = ClientProcess("publish", port, topic, count, pub, timeout)
    try:
        subscriber.ready()
        publisher.ready()
        publisher.go()
        start = publisher.started()
        publisher.result()
        got = subscriber.result()
    finally:
        publisher.close()
        subscriber.close()
    received = int(got["received"])
    if received < count:
        console.print(f"[red]raw subscriber received {received:,} of {count:,} (QoS 1 messages lost)")
        return (received / max(got["last"] - start, 1e-9) if received else 0.0), received
    return count / (got["last"] - start), received


if __name__ == "__main__":
    client_main()
