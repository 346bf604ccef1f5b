"""Resident memory of `gridhub edge run` with storage and 5 busy apps, sampled over a window.

Target (the issue): the runtime process stays under 100 MB RSS and is flat: the slope of RSS over
the second half of the window, extrapolated, is under 2 MB per 10 minutes. The apps and the
managed broker (children) are reported separately. Reference printed beside it: the RSS of an
idle Python interpreter that has made the same imports as the runtime.

Each app is a plain paho-mqtt LV-CAP app (this file run with ``--app``): it requests its
configuration, answers status requests, obeys the shut-down command and publishes Scalars at
``rate`` messages/s on ``algorithm/data/<IID>/bench/value``, with ToStore as configured.

Default window 120 s (``--duration 3600`` for the full hour; ``--quick`` 30 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench.common import (
    REPO_ROOT,
    Options,
    Summary,
    Verdict,
    console,
    free_port,
    header,
    mosquitto_binary,
    progress,
    stop_process,
    wait_for,
)

APPS = 5
RATE = 50.0  # messages/s per app
STORING_APPS = 3  # the first 3 apps publish ToStore true, the other 2 ToStore false
RSS_LIMIT_MB = 100.0
SLOPE_LIMIT_MB_PER_10MIN = 2.0
MB = 1024 * 1024

# What the runtime process imports; the idle reference interpreter makes the same imports.
RUNTIME_IMPORTS = (
    "gridhub.cli",
    "gridhub.edge.runtime",
    "gridhub.edge.manager",
    "gridhub.edge.storage",
    "gridhub.edge.marketplace",
    "gridhub.sdk.mqtt",
)


def _config(data_dir: Path, port: int, mode: str) -> str:
    lines = [
        "version = 1",
        f'data_dir = "{data_dir}"',
        "[marketplace]",
        f'mode = "{mode}"',
        'host = "127.0.0.1"',
        f"port = {port}",
    ]
    if mode == "managed":
        lines.append(f'mosquitto = "{mosquitto_binary()}"')
    lines += ["[manager]", "status_interval = 10.0", "[storage]", "max_length = 15000"]
    for index in range(APPS):
        lines += [
            "[[app]]",
            'vendor = "bench"',
            f'name = "load{index + 1}"',
            'version = "1.0.0"',
            'instance = "01"',
            f"command = {json.dumps([sys.executable, '-m', 'bench.bench_runtime_memory', '--app'])}",
            "[app.config]",
            f"rate = {RATE}",
            f"to_store = {'true' if index < STORING_APPS else 'false'}",
        ]
    return "\n".join(lines) + "\n"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), str(REPO_ROOT / "src"), env.get("PYTHONPATH")) if p)
    return env


def _gridhub_command() -> list[str]:
    script = Path(sys.executable).with_name("gridhub")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "gridhub.cli"]


def _idle_reference_rss() -> float:
    """RSS (MB) of an idle interpreter with the runtime's imports (those that exist)."""
    code = (
        "import importlib, sys, time\n"
        f"for m in {RUNTIME_IMPORTS!r}:\n"
        "    try: importlib.import_module(m)\n"
        "    except ImportError as e: print('missing', m, e, file=sys.stderr)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=_env(), cwd=str(REPO_ROOT))
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(0.5)
        return float(psutil.Process(proc.pid).memory_info().rss) / MB
    finally:
        stop_process(proc)


def _slope_mb_per_10min(times: list[float], values: list[float]) -> float:
    n = len(times)
    if n < 3:
        return 0.0
    mt = sum(times) / n
    mv = sum(values) / n
    var = sum((t - mt) ** 2 for t in times)
    if var == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in zip(times, values, strict=True)) / var * 600.0


def _stored_rows(database: Path) -> int | None:
    if not database.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1.0)
        try:
            names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            total = 0
            for name in names:
                if name.startswith("bench_load"):
                    total += con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
            if total == 0 and "messages" in names:
                total = con.execute("SELECT count(*) FROM messages").fetchone()[0]
            return int(total)
        finally:
            con.close()
    except sqlite3.Error:
        return None


def run(options: Options) -> int:
    """Run `gridhub edge run` under load, sample RSS and compare against the targets."""
    duration = options.duration or (30.0 if options.quick else 120.0)
    mode = options.mode or ("managed" if mosquitto_binary() else "embedded")
    header(
        "bench_runtime_memory",
        f"`gridhub edge run` ({mode} marketplace) + storage + {APPS} apps x {RATE:g} msg/s "
        f"({STORING_APPS} with ToStore true); RSS sampled every 1 s for {duration:g} s.",
    )
    verdict = Verdict("bench_runtime_memory")
    reference = _idle_reference_rss()
    console.print(f"reference: idle interpreter with the runtime's imports: {reference:.1f} MB RSS")
    with tempfile.TemporaryDirectory(prefix="gridhub-bench-runtime-") as tmp:
        tmpdir = Path(tmp)
        data_dir = tmpdir / "edge"
        config = tmpdir / "edge.toml"
        port = free_port()
        config.write_text(_config(data_dir, port, mode))
        log = (tmpdir / "runtime.log").open("wb")
        proc = subprocess.Popen(
            [*_gridhub_command(), "edge", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=str(tmpdir),
            start_new_session=True,
        )
        runtime = psutil.Process(proc.pid)
        seen_children: dict[int, psutil.Process] = {}
        samples: list[tuple[float, float, float, int]] = []  # (t, runtime MB, children MB, children)
        try:
            database = data_dir / "storage.sqlite"

            def apps_running() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"gridhub edge run exited with {proc.returncode}")
                kids = [c for c in runtime.children(recursive=True) if "bench_runtime_memory" in " ".join(_cmd(c))]
                return len(kids) >= APPS and (_stored_rows(database) or 0) > 0

            try:
                wait_for(apps_running, 60, f"{APPS} apps running and data stored", interval=0.5)
            except (TimeoutError, RuntimeError):
                log.flush()
                console.print((tmpdir / "runtime.log").read_text()[-3000:])
                raise
            rows_start = _stored_rows(database) or 0
            start = time.monotonic()
            with progress() as bar:
                task = bar.add_task("sampling RSS", total=duration)
                while (elapsed := time.monotonic() - start) < duration:
                    if proc.poll() is not None:
                        raise RuntimeError(f"gridhub edge run exited with {proc.returncode} during the window")
                    kids = runtime.children(recursive=True)
                    for kid in kids:
                        seen_children.setdefault(kid.pid, kid)
                    own = runtime.memory_info().rss / MB
                    kid_total = 0.0
                    for kid in kids:
                        with contextlib.suppress(psutil.Error):
                            kid_total += kid.memory_info().rss / MB
                    samples.append((elapsed, own, kid_total, len(kids)))
                    bar.update(task, completed=min(elapsed, duration))
                    time.sleep(max(0.0, 1.0 - (time.monotonic() - start - elapsed)))
            rows_end = _stored_rows(database) or 0
            cpu = runtime.cpu_times()
            db_mb = sum(p.stat().st_size for p in data_dir.glob("storage.sqlite*")) / MB
        finally:
            _shutdown(proc, seen_children)
            log.close()

    runtime_mb = [s[1] for s in samples]
    children_mb = [s[2] for s in samples]
    half = [s for s in samples if s[0] >= duration / 2]
    slope = _slope_mb_per_10min([s[0] for s in half], [s[1] for s in half])
    slope_kids = _slope_mb_per_10min([s[0] for s in half], [s[2] for s in half])
    stored_rate = (rows_end - rows_start) / duration
    peak = max(runtime_mb)
    console.print(f"samples: {len(samples)} over {duration:g} s; children: {samples[-1][3]} processes at the end")
    step = max(1, len(samples) // 10)
    trajectory = ", ".join(f"{t:.0f} s {mb:.1f}" for t, mb, _, _ in samples[::step] + samples[-1:])
    console.print(f"runtime RSS trajectory (MB): {trajectory}")
    console.print(f"database file at the end: {db_mb:.1f} MB (WAL included)")
    console.print(
        f"runtime process RSS: start {runtime_mb[0]:.1f} MB, median {Summary(tuple(runtime_mb)).median:.1f}, "
        f"peak {peak:.1f}, end {runtime_mb[-1]:.1f} MB  (reference idle interpreter {reference:.1f} MB, "
        f"peak = {peak / reference:.2f}x)"
    )
    console.print(
        f"children (broker + apps) RSS total: start {children_mb[0]:.1f} MB, peak {max(children_mb):.1f}, "
        f"end {children_mb[-1]:.1f} MB; slope second half {slope_kids:+.2f} MB/10 min"
    )
    console.print(
        f"runtime slope over the second half: {slope:+.2f} MB per 10 min extrapolated; "
        f"runtime CPU user+system {cpu.user + cpu.system:.1f} s; rows stored during the window: "
        f"{rows_end - rows_start:,} ({stored_rate:,.0f}/s, offered {STORING_APPS * RATE:g}/s)"
    )
    verdict.check(
        f"runtime RSS < {RSS_LIMIT_MB:g} MB", peak < RSS_LIMIT_MB, f"peak {peak:.1f} MB (idle ref {reference:.1f})"
    )
    verdict.check(
        f"RSS flat: slope < {SLOPE_LIMIT_MB_PER_10MIN:g} MB/10 min",
        slope < SLOPE_LIMIT_MB_PER_10MIN,
        f"{slope:+.2f} MB/10 min over the last {duration / 2:g} s",
    )
    verdict.check(
        "storage kept up with the ToStore load",
        stored_rate >= 0.9 * STORING_APPS * RATE,
        f"{stored_rate:,.0f} rows/s of {STORING_APPS * RATE:g} offered",
    )
    return verdict.show()


def _cmd(process: psutil.Process) -> list[str]:
    try:
        return list(process.cmdline())
    except psutil.Error:
        return []


def _shutdown(proc: subprocess.Popen[bytes], children: dict[int, psutil.Process]) -> None:
    """Stop the runtime (SIGTERM, as a service manager would); reap any child it left behind."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            console.print("[red]gridhub edge run did not stop within 30 s of SIGTERM; killing it")
            proc.kill()
            proc.wait(5)
    for child in children.values():
        try:
            if child.is_running():
                console.print(f"[yellow]left behind by the runtime: pid {child.pid} {' '.join(_cmd(child))[:80]}")
                child.kill()
        except psutil.Error:
            pass


# -- the load app (run by the manager as `python -m bench.bench_runtime_memory --app`) -------------


def app_main() -> None:
    """A minimal LV-CAP app on plain paho-mqtt: config, status, shut-down, and a steady Scalar stream."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    iid = os.environ["LVCAP_IID"]
    apid = os.environ.get("LVCAP_APID", iid)
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=apid, clean_session=True)
    if os.environ.get("LVCAP_USERNAME"):
        client.username_pw_set(os.environ["LVCAP_USERNAME"], os.environ.get("LVCAP_PASSWORD") or None)
    if os.environ.get("LVCAP_CA_FILE"):
        client.tls_set(
            ca_certs=os.environ["LVCAP_CA_FILE"],
            certfile=os.environ.get("LVCAP_CERT_FILE") or None,
            keyfile=os.environ.get("LVCAP_KEY_FILE") or None,
        )
    status_topic = f"status/response/{iid}"
    client.will_set(status_topic, json.dumps({"Status": 2, "Message": "connection lost"}), qos=1)
    config: dict[str, object] = {}
    configured = threading.Event()
    stop = threading.Event()

    def on_connect(c: paho.Client, u: object, flags: object, reason: object, props: object) -> None:
        c.subscribe([(f"config/response/{iid}", 1), ("status/request", 0), (f"command/{iid}", 1)])
        c.publish(f"config/request/{iid}", json.dumps({"Timestamp": int(time.time())}), qos=1)

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if msg.topic.startswith("config/response/"):
            configuration = body.get("Configuration", {})
            # 9.5 Application Configuration: the app's own settings are under ContainerConfig.
            config.update(configuration.get("ContainerConfig", configuration))
            configured.set()
        elif msg.topic == "status/request":
            status = 1 if configured.is_set() else 5
            c.publish(status_topic, json.dumps({"Status": status, "Timestamp": int(time.time())}), qos=1)
        elif msg.topic.startswith("command/") and body.get("Command") == 1:
            c.publish(status_topic, json.dumps({"Status": 4, "Timestamp": int(time.time())}), qos=1)
            stop.set()

    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.connect(os.environ.get("LVCAP_BROKER_HOST", "127.0.0.1"), int(os.environ.get("LVCAP_BROKER_PORT", "1883")))
    client.loop_start()
    configured.wait()
    rate = float(str(config.get("rate", RATE)))
    to_store = bool(config.get("to_store", True))
    topic = f"algorithm/data/{iid}/bench/value"
    interval = 1.0 / rate
    next_at = time.monotonic()
    value = 0.0
    while not stop.is_set():
        value = (value + 0.5) % 500
        payload = {"Timestamp": int(time.time()), "Value": 240.0 + value, "Valid": True, "ToStore": to_store}
        client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1)
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))
    time.sleep(0.2)  # let the SHUT_DWN status go out
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    if "--app" in sys.argv:
        app_main()
    else:
        from bench.__main__ import main

        sys.exit(main(["runtime_memory", *sys.argv[1:]]))
