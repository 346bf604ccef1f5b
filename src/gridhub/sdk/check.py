"""``gridhub app check``: a conformance check of an LV-CAP app against the Public API (Annex 4).

The app runs under the replay harness (gridhub.sdk.replay): an embedded marketplace whose broker
hook logs every CONNECT, SUBSCRIBE and PUBLISH with the ACL decision, and a Container Manager
role the checker drives step by step. Any app in any language can be checked: the checker only
looks at what crosses the marketplace and at the process (exit, SIGKILL).

The run, in order:

1. start the app; log its connection, subscriptions and config/request;
2. answer the first config/request with an invalid configuration (by default what a Container
   Manager sends when it has none: ``{"Configuration": null, "Message": ...}``; or --bad-config);
   expect STATUS_INITIAL or STATUS_ERROR plus an error report, then answer with the valid one
   (re-sending it on STATUS_INITIAL, restarting the app on STATUS_ERROR, as the manager does);
3. expect STATUS_MSG_OK; deliver the same configuration again; feed --input messages if given;
4. poll status a few times; leave a gap without polls, then poll once and then in a burst: the
   app must answer each (missed-poll); send the shut-down command; expect STATUS_SHUT_DWN and an exit;
5. start the app again, configure it and SIGKILL it: the broker must publish its Last Will.

Then every rule in RULES is judged from the log: pass, fail (with what was seen) or skip (with why).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gridhub.formats.lvcap import (
    ConfigRequest,
    ErrorReport,
    LvcapError,
    MetadataObject,
    StatusResponse,
    StorageQuery,
    UploadedNotice,
    command_topic,
    config_request_topic,
    config_response_topic,
    decode_json_object,
    parse_standard_object,
    status_request_topic,
    status_response_topic,
    storage_error_topic,
    topic_matches,
    validate_topic,
)
from gridhub.sdk.mqtt import Message
from gridhub.sdk.replay import (
    FAILURE_STATUSES,
    STATUS_INITIAL,
    STATUS_OK,
    AppIdentity,
    AppTarget,
    BrokerEvent,
    Harness,
    InputMessage,
    ReplayError,
    config_payload,
    run_replay,
    status_of,
)

log = logging.getLogger(__name__)

Outcome = Literal["pass", "fail", "skip"]
STATUS_SHUT_DWN = 4
POLLS = 3
POLL_BURST = 5
"""Back-to-back polls of the missed-poll rule: a manager may poll faster than the app expects."""
_STANDARD_KEYS = frozenset({"Value", "Coordinates", "StartPoint", "Interval"})


@dataclass(frozen=True)
class Rule:
    """One conformance rule: a short id, what it checks and the API section it comes from."""

    id: str
    title: str
    section: str


RULES: tuple[Rule, ...] = (
    Rule("connect", "Connects with client id = username = APID", "8.1 Table 4"),
    Rule(
        "startup-order",
        "Subscribes to status/request, config/response/<IID>, command/<IID> before requesting its configuration",
        "5.2, 5.3 Table 2",
    ),
    Rule(
        "config-request",
        "Requests its configuration on config/request/<IID> (QoS 1, not retained)",
        "5.2 step 3, 8.2.1",
    ),
    Rule(
        "config-error", "Invalid configuration: STATUS_INITIAL or STATUS_ERROR and an error report", "5.2 step 7, 8.2.4"
    ),
    Rule("config-ok", "Valid configuration: STATUS_MSG_OK", "5.2 step 6"),
    Rule("config-twice", "The same configuration delivered twice is harmless", "8.2.1"),
    Rule("status-poll", "Answers status/request within the poll interval with STATUS_MSG_OK", "8.2.2"),
    Rule(
        "missed-poll",
        "Keeps answering polls that come slower (after a gap) or faster (a burst) than usual",
        "8.2.2, 5.3 Table 2",
    ),
    Rule("shutdown", "Shut-down command: STATUS_SHUT_DWN, then the process exits within the grace", "6, 8.2.3"),
    Rule("lwt", "Last Will on status/response/<IID> with a failure status, published when killed", "8.1.3"),
    Rule("topic-names", "Every published topic is a valid LV-CAP topic name", "4.4"),
    Rule("payloads", "Every payload is a JSON object; API and standard objects parse", "4.3, 8, 9"),
    Rule("qos-retain", "QoS and retain flags as the API sets them per topic", "8.1.4, Tables 5-19"),
    Rule("own-topics", "Publishes only on its own topics (no ACL denials)", "3, 8.1"),
)
RULE_BY_ID = {rule.id: rule for rule in RULES}


@dataclass(frozen=True)
class RuleResult:
    """The verdict on one rule, with what was seen."""

    rule: Rule
    outcome: Outcome
    detail: str


@dataclass
class CheckReport:
    """All verdicts of one check run."""

    target: str
    iid: str
    apid: str
    results: list[RuleResult] = field(default_factory=list)
    app_output: str = ""

    @property
    def passed(self) -> bool:
        """Tell whether no rule failed (skipped rules do not fail a check)."""
        return all(result.outcome != "fail" for result in self.results)

    def result(self, rule_id: str) -> RuleResult:
        """Return the verdict on a rule by id."""
        for result in self.results:
            if result.rule.id == rule_id:
                return result
        raise KeyError(rule_id)

    def failed(self) -> list[str]:
        """Return the ids of the failed rules."""
        return [r.rule.id for r in self.results if r.outcome == "fail"]

    def to_json(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {
            "target": self.target,
            "iid": self.iid,
            "apid": self.apid,
            "passed": self.passed,
            "results": [
                {
                    "rule": r.rule.id,
                    "section": r.rule.section,
                    "title": r.rule.title,
                    "outcome": r.outcome,
                    "detail": r.detail,
                }
                for r in self.results
            ],
        }


@dataclass
class CheckOptions:
    """Tunables of a check run (seconds unless said otherwise)."""

    timeout: float = 5.0  # for each expected reaction (connect, status after a config, ...)
    poll_interval: float = 1.0  # an answer to status/request must come within this
    grace: float = 10.0  # after the shut-down command, STATUS_SHUT_DWN and exit within this
    poll_gap: float = 3.0  # missed-poll: no poll for this long, then one must still be answered
    bad_config: Mapping[str, Any] | None = None  # a ContainerConfig the app must refuse
    inputs: Sequence[InputMessage] = ()  # fed while the app runs, to see its outputs


class _Checker:
    def __init__(self, harness: Harness, options: CheckOptions) -> None:
        self.h = harness
        self.o = options
        self.iid = harness.iid
        self.apid = harness.apid
        self.results: dict[str, RuleResult] = {}
        self.will_seen: list[Message] = []
        self.bad_config_sent_at: int | None = None
        self.phase = "bad"
        self.configured = False
        self.events_run1: list[BrokerEvent] = []

    def verdict(self, rule_id: str, outcome: Outcome, detail: str) -> None:
        self.results[rule_id] = RuleResult(RULE_BY_ID[rule_id], outcome, detail)

    # -- driving the app -----------------------------------------------------------------------

    def config_policy(self, number: int) -> Mapping[str, Any] | None:
        if self.phase == "bad":
            self.phase = "good"
            self.bad_config_sent_at = self.h.mark()
            return self.bad_payload()
        return config_payload(self.iid, self.h.config)

    def bad_payload(self) -> dict[str, Any]:
        if self.o.bad_config is not None:
            return config_payload(self.iid, self.o.bad_config)
        message = f"no configuration for {self.iid} (gridhub app check: configuration error path)"
        return {"Configuration": None, "Message": message, "Timestamp": int(time.time())}

    def on_status_response(self, message: Message) -> None:
        self.will_seen.append(message)

    def run(self) -> None:
        h = self.h
        h.config_policy = self.config_policy
        h.client.subscribe(status_response_topic(self.iid), 1, self.on_status_response)
        h.launch()
        request_topic = config_request_topic(self.iid)
        asked = h.broker_log.wait(
            lambda events: any(e.kind == "publish" and e.topic == request_topic for e in events) or not h.alive(),
            self.o.timeout,
        )
        if not asked or not h.alive():
            self.events_run1 = h.broker_log.snapshot()
            why = "exited" if not h.alive() else f"sent no config/request within {self.o.timeout:g} s"
            self.verdict("config-request", "fail", f"the app {why}")
            self.check_will_by_kill()
            return
        self.check_error_path()
        if self.configured:
            self.check_twice()
            self.feed_inputs()
            self.check_polls()
            self.check_missed_polls()
            self.check_shutdown()
        self.events_run1 = self.h.broker_log.snapshot()
        self.check_will_by_kill()

    def check_error_path(self) -> None:
        h = self.h
        # The first config/request was answered with the invalid configuration by config_policy.
        if not h.broker_log.wait(lambda _: self.bad_config_sent_at is not None, self.o.timeout):
            self.verdict("config-error", "fail", "the invalid configuration could not be sent")
            return
        since = self.bad_config_sent_at or 0
        status = h.wait_status(since, lambda s: s is not None, self.o.timeout)
        h.broker_log.wait(lambda _: bool(h.error_reports(since)), 0.5 if status is not None else 0.0)
        reports = h.error_reports(since)
        report_text = "; ".join(_text(e.payload) for e in reports) or "none"
        problems = []
        if status is None:
            problems.append(f"no status/response within {self.o.timeout:g} s" + ("" if h.alive() else " (exited)"))
        elif status not in (STATUS_INITIAL, *FAILURE_STATUSES):
            problems.append(f"status {status} (expected 5 STATUS_INITIAL, or 2/3 STATUS_ERROR)")
        valid_reports = [e for e in reports if _parses(ErrorReport, e.payload)]
        if not valid_reports:
            problems.append("no valid error report on " + storage_error_topic(self.iid))
        if problems:
            self.verdict("config-error", "fail", "; ".join(problems) + f"; error reports: {report_text}")
        else:
            self.verdict("config-error", "pass", f"status {status}; error report: {_text(valid_reports[0].payload)}")
        # Now as the Container Manager: resend on STATUS_INITIAL, restart on STATUS_ERROR or exit.
        since_good = h.mark()
        if status in FAILURE_STATUSES or not h.alive():
            h.kill()
            h.launch()
        else:
            h.send_config()
        ok = h.wait_status(since_good, lambda s: s == STATUS_OK, self.o.timeout)
        if ok == STATUS_OK:
            self.configured = True
            self.verdict("config-ok", "pass", "STATUS_MSG_OK after the valid configuration")
        else:
            seen = [s for _, s in h.statuses(since_good)]
            self.verdict(
                "config-ok",
                "fail",
                f"no STATUS_MSG_OK within {self.o.timeout:g} s; statuses seen: "
                f"{seen or 'none'}" + ("" if h.alive() else "; the app exited"),
            )

    def check_twice(self) -> None:
        h = self.h
        since = h.mark()
        h.send_config()
        # A poll after the duplicate: answered with STATUS_MSG_OK when the app shrugged it off.
        time.sleep(0.1)
        h.poll()
        answered = h.wait_status(since, lambda s: s is not None, self.o.timeout)
        time.sleep(0.1)
        statuses = [s for _, s in h.statuses(since)]
        errors = h.error_reports(since)
        bad = [s for s in statuses if s != STATUS_OK]
        if not h.alive():
            self.verdict("config-twice", "fail", "the app exited after the configuration was delivered again")
        elif answered is None:
            self.verdict("config-twice", "fail", f"no status/response within {self.o.timeout:g} s after it")
        elif bad or errors:
            detail = f"statuses {statuses}" + (
                f"; error reports: {[_text(e.payload) for e in errors]}" if errors else ""
            )
            self.verdict("config-twice", "fail", detail)
        else:
            self.verdict("config-twice", "pass", f"still STATUS_MSG_OK (statuses after it: {statuses})")

    def feed_inputs(self) -> None:
        if not self.o.inputs:
            return
        try:
            run_replay(self.h, self.o.inputs)
        except ReplayError as exc:
            log.warning("feeding --input: %s", exc)

    def check_polls(self) -> None:
        h = self.h
        problems: list[str] = []
        latencies: list[float] = []
        for number in range(1, POLLS + 1):
            since = h.mark()
            sent = time.monotonic()
            h.poll()
            status = h.wait_status(since, lambda s: True, self.o.poll_interval)
            answers = h.statuses(since)
            if status is None or not answers:
                problems.append(f"poll {number}: no answer within {self.o.poll_interval:g} s")
                continue
            event, code = answers[0]
            latencies.append(event.time - sent)
            if code != STATUS_OK:
                problems.append(f"poll {number}: Status {code} (expected 1 STATUS_MSG_OK)")
            if not _parses(StatusResponse, event.payload):
                problems.append(f"poll {number}: invalid status payload {_text(event.payload)}")
        if problems:
            self.verdict("status-poll", "fail", "; ".join(problems))
        else:
            slowest = max(latencies) * 1000 if latencies else 0.0
            self.verdict("status-poll", "pass", f"{POLLS} polls answered with 1, slowest in {slowest:.0f} ms")

    def check_missed_polls(self) -> None:
        """Poll after a gap, then POLL_BURST times back to back: every poll needs its STATUS_MSG_OK.

        The manager counts each unanswered poll and restarts the app after three (8.2.2), so an app
        that goes quiet when polls pause (a watchdog that gives up, a loop that sleeps) or that
        answers only some of a burst (rate limiting, coalescing) gets restarted in the field.
        """
        h = self.h
        problems: list[str] = []
        if h.wait_exit(self.o.poll_gap) is not None:
            self.verdict("missed-poll", "fail", f"the app exited during a {self.o.poll_gap:g} s gap without polls")
            return
        since = h.mark()
        sent = time.monotonic()
        h.poll()
        status = h.wait_status(since, lambda s: True, self.o.poll_interval)
        answers = h.statuses(since)
        gap_detail = ""
        if status is None or not answers:
            problems.append(
                f"no answer within {self.o.poll_interval:g} s to the poll after a {self.o.poll_gap:g} s gap"
            )
        else:
            event, code = answers[0]
            gap_detail = f"after a {self.o.poll_gap:g} s gap answered in {(event.time - sent) * 1000:.0f} ms"
            if code != STATUS_OK:
                problems.append(f"the poll after a {self.o.poll_gap:g} s gap got Status {code} (expected 1)")
        since = h.mark()
        for _ in range(POLL_BURST):
            h.poll()
        topic = status_response_topic(self.iid)

        def burst_answered(events: list[BrokerEvent]) -> bool:
            answered = sum(1 for e in events[since:] if e.kind == "publish" and e.topic == topic)
            return answered >= POLL_BURST

        h.broker_log.wait(burst_answered, self.o.poll_interval)
        codes = [code for _, code in h.statuses(since)]
        if len(codes) < POLL_BURST:
            problems.append(
                f"{POLL_BURST} back-to-back polls got {len(codes)} answers within {self.o.poll_interval:g} s"
            )
        elif any(code != STATUS_OK for code in codes):
            problems.append(f"{POLL_BURST} back-to-back polls got Status {codes} (expected all 1)")
        if not h.alive():
            problems.append("the app exited")
        if problems:
            why = " (the Container Manager restarts an app after three unanswered polls)"
            self.verdict("missed-poll", "fail", "; ".join(problems) + why)
        else:
            self.verdict("missed-poll", "pass", f"{gap_detail}; {POLL_BURST} back-to-back polls all answered with 1")

    def check_shutdown(self) -> None:
        h = self.h
        since = h.mark()
        started = time.monotonic()
        h.send_command(1)
        status = h.wait_status(since, lambda s: s == STATUS_SHUT_DWN, self.o.grace)
        code = h.wait_exit(max(0.0, self.o.grace - (time.monotonic() - started)))
        seen = [s for _, s in h.statuses(since)]
        if status == STATUS_SHUT_DWN and code is not None:
            self.verdict(
                "shutdown", "pass", f"STATUS_SHUT_DWN, exited with code {code} in {time.monotonic() - started:.1f} s"
            )
        else:
            problems = []
            if status != STATUS_SHUT_DWN:
                problems.append(f"no STATUS_SHUT_DWN (statuses seen: {seen or 'none'})")
            if code is None:
                problems.append(f"still running {self.o.grace:g} s after the command")
            self.verdict("shutdown", "fail", "; ".join(problems))
        h.kill()

    def check_will_by_kill(self) -> None:
        connects = [e for e in self.events_run1 if e.kind == "connect"]
        will = connects[0] if connects else None
        expected = status_response_topic(self.iid)
        if will is None:
            self.verdict("lwt", "fail", "the app never connected")
            return
        if will.will_topic is None:
            self.verdict("lwt", "fail", "no Last Will set on CONNECT")
            return
        status = status_of(will.will_payload)
        problems = []
        if will.will_topic != expected:
            problems.append(f"will topic {will.will_topic!r}, expected {expected!r}")
        if status not in FAILURE_STATUSES:
            problems.append(f"will payload {_text(will.will_payload)} has Status {status} (expected 2 STATUS_MSG_FAIL)")
        if problems:
            self.verdict("lwt", "fail", "; ".join(problems))
            return
        if not self.configured:
            self.verdict(
                "lwt", "pass", f"will set ({_text(will.will_payload)}); not killed: the app was not configured"
            )
            return
        # Start it again, let it be configured, then SIGKILL: the broker must publish the will.
        h = self.h
        self.phase = "good"
        since = h.mark()
        h.launch()
        if h.wait_status(since, lambda s: s == STATUS_OK, self.o.timeout) != STATUS_OK:
            self.verdict(
                "lwt",
                "pass",
                f"will set ({_text(will.will_payload)}); the restarted app was not "
                "configured in time, so it was not killed",
            )
            return
        self.will_seen.clear()
        h.signal(signal.SIGKILL)
        h.wait_exit(5.0)
        deadline = time.monotonic() + self.o.timeout
        while time.monotonic() < deadline and not any(status_of(m.payload) in FAILURE_STATUSES for m in self.will_seen):
            time.sleep(0.05)
        published = [m for m in self.will_seen if status_of(m.payload) in FAILURE_STATUSES]
        if published:
            self.verdict("lwt", "pass", f"after SIGKILL the broker published {_text(published[0].payload)}")
        else:
            self.verdict(
                "lwt", "fail", f"will set but nothing published on {expected} within {self.o.timeout:g} s of SIGKILL"
            )

    # -- rules judged from the broker log ----------------------------------------------------------

    def judge_log(self) -> None:
        events = self.h.broker_log.snapshot()
        first_run = self.events_run1 or events
        self.judge_connect(first_run)
        self.judge_startup(first_run)
        publishes = [e for e in events if e.kind == "publish"]
        self.judge_topics(publishes)
        self.judge_payloads(publishes)
        self.judge_qos(publishes)
        self.judge_acl(events)

    def judge_connect(self, events: list[BrokerEvent]) -> None:
        connects = [e for e in events if e.kind == "connect"]
        if not connects:
            self.verdict("connect", "fail", "the app never connected to the marketplace")
            return
        wrong = [
            f"client id {e.client_id!r}, username {e.username!r}"
            for e in connects
            if e.client_id != self.apid or e.username != self.apid
        ]
        if wrong:
            self.verdict("connect", "fail", f"expected both {self.apid!r}; got " + "; ".join(wrong))
        else:
            self.verdict("connect", "pass", f"client id and username {self.apid!r}")

    def judge_startup(self, events: list[BrokerEvent]) -> None:
        request_topic = config_request_topic(self.iid)
        first_request = next((e.index for e in events if e.kind == "publish" and e.topic == request_topic), None)
        if first_request is None:
            self.verdict("startup-order", "fail", "no config/request was sent")
        else:
            required = (status_request_topic(), config_response_topic(self.iid), command_topic(self.iid))
            subscribed = [e for e in events if e.kind == "subscribe" and e.allowed and e.index < first_request]
            missing = [topic for topic in required if not any(topic_matches(e.topic, topic) for e in subscribed)]
            later = [
                e.topic
                for e in events
                if e.kind == "subscribe"
                and e.index > first_request
                and any(topic_matches(e.topic, topic) for topic in missing)
            ]
            if missing:
                detail = f"not subscribed before config/request: {', '.join(missing)}"
                if later:
                    detail += f" (subscribed after it: {', '.join(later)})"
                self.verdict("startup-order", "fail", detail)
            else:
                self.verdict("startup-order", "pass", "all three subscriptions came before config/request")
        requests = [e for e in events if e.kind == "publish" and e.topic == request_topic]
        if "config-request" in self.results:
            return
        if not requests:
            self.verdict("config-request", "fail", f"nothing published on {request_topic}")
            return
        first = requests[0]
        problems = []
        if first.qos != 1:
            problems.append(f"QoS {first.qos} (expected 1)")
        if first.retain:
            problems.append("retained (must not be)")
        if not _parses(ConfigRequest, first.payload):
            problems.append(f"payload {_text(first.payload)} is not a valid request object")
        self.verdict("config-request", "fail" if problems else "pass", "; ".join(problems) or f"sent {request_topic}")

    def judge_topics(self, publishes: list[BrokerEvent]) -> None:
        bad = []
        for event in publishes:
            try:
                validate_topic(event.topic)
            except LvcapError as exc:
                bad.append(str(exc))
        self.verdict(
            "topic-names",
            "fail" if bad else "pass",
            "; ".join(dict.fromkeys(bad)) or f"{len(publishes)} publishes, all valid",
        )

    def judge_payloads(self, publishes: list[BrokerEvent]) -> None:
        bad = []
        for event in publishes:
            problem = payload_problem(event.topic, event.payload)
            if problem:
                bad.append(problem)
        self.verdict(
            "payloads",
            "fail" if bad else "pass",
            "; ".join(dict.fromkeys(bad)) or f"{len(publishes)} payloads, all valid",
        )

    def judge_qos(self, publishes: list[BrokerEvent]) -> None:
        bad = []
        for event in publishes:
            expected = expected_qos_retain(event.topic)
            if expected is None:
                continue
            qos, retain = expected
            if event.qos != qos or event.retain != retain:
                bad.append(
                    f"{event.topic}: QoS {event.qos}{' retained' if event.retain else ''} "
                    f"(expected QoS {qos}{', retained' if retain else ', not retained'})"
                )
        self.verdict("qos-retain", "fail" if bad else "pass", "; ".join(dict.fromkeys(bad)) or "as the API says")

    def judge_acl(self, events: list[BrokerEvent]) -> None:
        denied = [f"{e.kind} {e.topic}" for e in events if e.kind in ("publish", "subscribe") and not e.allowed]
        if denied:
            self.verdict("own-topics", "fail", "refused by the marketplace ACL: " + "; ".join(dict.fromkeys(denied)))
        else:
            self.verdict("own-topics", "pass", "no ACL denials")


def expected_qos_retain(topic: str) -> tuple[int, bool] | None:
    """Return the (QoS, retain) the API sets for an app's publish on topic, or None when it sets none."""
    levels = topic.split("/")
    head = "/".join(levels[:2])
    if head in ("config/request", "status/response", "storage/uploaded") or topic.startswith("storage/data/error/"):
        return 1, False
    if head in ("sensor/data", "algorithm/data"):
        return 1, levels[-1] == "meta"
    if head == "storage/data":
        return 2, False
    if topic.startswith("storage/request/newdata/"):
        return 2, False
    if head == "storage/request":
        return 1, False
    return None


_PARSERS: tuple[tuple[str, Callable[[dict[str, Any], str], object]], ...] = (
    ("config/request/", lambda d, w: ConfigRequest.from_json(d, w)),
    ("status/response/", lambda d, w: StatusResponse.from_json(d, w)),
    ("storage/data/error/", lambda d, w: ErrorReport.from_json(d, w)),
    ("storage/request/", lambda d, w: StorageQuery.from_json(d, w)),
    ("storage/uploaded/", lambda d, w: UploadedNotice.from_json(d, w)),
)


def payload_problem(topic: str, payload: bytes) -> str | None:
    """Return what is wrong with a payload the app published on topic, or None when it is valid."""
    try:
        data = decode_json_object(payload, where=topic)
        for prefix, parse in _PARSERS:
            if topic.startswith(prefix):
                parse(data, topic)
                return None
        if topic.startswith(("sensor/data/", "algorithm/data/", "storage/data/")):
            if topic.endswith("/meta"):
                MetadataObject.from_json(data, topic)
            elif _STANDARD_KEYS.intersection(data):
                parse_standard_object(data, topic)
    except (LvcapError, TypeError) as exc:
        return str(exc)
    return None


def _parses(kind: type[StatusResponse] | type[ErrorReport] | type[ConfigRequest], payload: bytes) -> bool:
    try:
        kind.from_json(decode_json_object(payload, where=kind.__name__), kind.__name__)
    except (LvcapError, TypeError):
        return False
    return True


def _text(payload: bytes, limit: int = 160) -> str:
    text = payload.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check(
    target: AppTarget,
    identity: AppIdentity | None = None,
    config: Mapping[str, Any] | None = None,
    options: CheckOptions | None = None,
) -> CheckReport:
    """Run the conformance check of the app and return the verdict on every rule."""
    options = options or CheckOptions()
    with Harness(target, identity, config, timeout=max(options.timeout, options.grace)) as harness:
        checker = _Checker(harness, options)
        try:
            checker.run()
        finally:
            harness.kill()
        checker.judge_log()
        report = CheckReport(target.description, harness.iid, harness.apid, app_output=harness.log_tail(25))
    for rule in RULES:
        result = checker.results.get(rule.id)
        if result is None:
            why = "the app was not configured" if not checker.configured else "not reached"
            result = RuleResult(rule, "skip", why)
        report.results.append(result)
    return report


def report_json(report: CheckReport) -> str:
    """Return the report as indented JSON."""
    return json.dumps(report.to_json(), indent=1)
