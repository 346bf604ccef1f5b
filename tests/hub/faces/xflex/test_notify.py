"""/notify/email through a real SMTP server (aiosmtpd on 127.0.0.1), and /notify/twitter's 501."""

from __future__ import annotations

import dataclasses
import email
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from gridhub.hub.auth import Role
from gridhub.hub.settings import HubSettings
from tests.conftest import free_port
from tests.hub.auth.conftest import Clock
from tests.hub.faces.xflex.conftest import API, Hub, start_hub


class Mailbox:
    """An SMTP handler keeping what it receives."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def message(self, index: int = 0) -> Message:
        content = self.envelopes[index].content
        assert isinstance(content, bytes)
        return email.message_from_bytes(content)


@pytest.fixture
def smtp_sink() -> Iterator[tuple[Mailbox, int]]:
    """An SMTP server on a free 127.0.0.1 port that keeps every message."""
    mailbox, port = Mailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@pytest.fixture
def mail_hub(hub_settings: HubSettings, clock: Clock, smtp_sink: tuple[Mailbox, int]) -> Iterator[Hub]:
    settings = dataclasses.replace(
        hub_settings, smtp_host="127.0.0.1", smtp_port=smtp_sink[1], smtp_sender="hub@gridhub.test"
    )
    with start_hub(settings, clock) as hub:
        yield hub


def test_email_is_delivered_through_smtp(mail_hub: Hub, smtp_sink: tuple[Mailbox, int]) -> None:
    mailbox, _ = smtp_sink
    body: dict[str, Any] = {
        "from": "sender@server.com",
        "to": "receiver@sender.com",
        "cc": ["c1@x.org", "c2@x.org"],
        "bcc": "hidden@x.org",
        "subject": "Message title",
        "text": "Message content",
        "html": "<p>Message content</p>",
    }
    response = mail_hub.client.post(f"{API}/notify/email", json=body, headers=mail_hub.admin)
    assert response.status_code == 200 and response.json() == {"status": "success"}
    (envelope,) = mailbox.envelopes
    assert envelope.mail_from == "sender@server.com"
    assert sorted(envelope.rcpt_tos) == ["c1@x.org", "c2@x.org", "hidden@x.org", "receiver@sender.com"]
    message = mailbox.message()
    assert message["Subject"] == "Message title" and message["To"] == "receiver@sender.com"
    assert message["Bcc"] is None  # Bcc recipients get the message, but the header is not sent
    parts = {part.get_content_type(): part.get_payload(decode=True) for part in message.walk()}
    assert parts["text/plain"].strip() == b"Message content"  # type: ignore[union-attr]
    assert parts["text/html"].strip() == b"<p>Message content</p>"  # type: ignore[union-attr]


def test_default_sender_and_refused_options(mail_hub: Hub, smtp_sink: tuple[Mailbox, int]) -> None:
    mailbox, _ = smtp_sink
    ok = mail_hub.client.post(
        f"{API}/notify/email", json={"to": "a@x.org", "subject": "s", "text": "t"}, headers=mail_hub.admin
    )
    assert ok.status_code == 200 and mailbox.envelopes[0].mail_from == "hub@gridhub.test"
    for body, message in [
        ({"to": "a@x.org", "text": "t", "attachments": [{"path": "/etc/passwd"}]}, "attachments"),
        ({"subject": "no recipient", "text": "t"}, "recipient"),
        ({"to": "a@x.org", "subject": "empty"}, "no content"),
    ]:
        bad = mail_hub.client.post(f"{API}/notify/email", json=body, headers=mail_hub.admin)
        assert bad.status_code == 400 and message in bad.json()["message"], body
    assert len(mailbox.envelopes) == 1


def test_consumers_may_not_send(mail_hub: Hub) -> None:
    consumer = mail_hub.user("carol", Role.CONSUMER)
    response = mail_hub.client.post(f"{API}/notify/email", json={"to": "a@x.org", "text": "t"}, headers=consumer)
    assert response.status_code == 403


def test_without_smtp_settings_email_is_503(hub: Hub) -> None:
    response = hub.client.post(
        f"{API}/notify/email", json={"to": "a@x.org", "text": "t", "from": "b@x.org"}, headers=hub.admin
    )
    assert response.status_code == 503 and "[smtp] host" in response.json()["message"]


def test_unreachable_smtp_server_is_502(hub_settings: HubSettings, clock: Clock) -> None:
    settings = dataclasses.replace(hub_settings, smtp_host="127.0.0.1", smtp_port=free_port(), smtp_timeout=2.0)
    with start_hub(settings, clock) as hub:
        response = hub.client.post(
            f"{API}/notify/email", json={"to": "a@x.org", "text": "t", "from": "b@x.org"}, headers=hub.admin
        )
        assert response.status_code == 502 and "SMTP server" in response.json()["message"]


def test_twitter_is_retired(hub: Hub) -> None:
    body = {
        "consumer_key": "k",
        "consumer_secret": "s",
        "access_token_key": "a",
        "access_token_secret": "t",
        "status": "Hello Twitter",
    }
    response = hub.client.post(f"{API}/notify/twitter", json=body, headers=hub.admin)
    assert response.status_code == 501
    assert response.json()["status"] == "error" and "retired" in response.json()["message"]
    assert hub.client.post(f"{API}/notify/twitter", json=body).status_code == 401


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"headers": {"From": "boss@x.org"}}, "headers.From: set by from, not in headers"),
        ({"headers": {"bcc": "spy@x.org"}}, "headers.bcc: set by bcc, not in headers"),
        ({"headers": {"Message-ID": "<a@b>"}}, "headers.Message-ID: set by the hub"),
        ({"headers": {"Content-Type": "text/html"}}, "headers.Content-Type: set by text and html"),
        ({"headers": {"Bad Name": "v"}}, "headers.Bad Name: not a header field name"),
        ({"headers": {"X:Colon": "v"}}, "headers.X:Colon: not a header field name"),
        ({"headers": {"X-Tag": "a\r\nBcc: spy@x.org"}}, "headers.X-Tag: must not contain line breaks"),
        ({"subject": "hello\r\nBcc: spy@x.org"}, "subject: must not contain line breaks"),
        ({"subject": "hello\nX-Evil: 1"}, "subject: must not contain line breaks"),
        ({"to": ["a@x.org", "b@x.org\nBcc: spy@x.org"]}, "to[1]: must not contain line breaks"),
        ({"from": "me@x.org\r\nBcc: spy@x.org"}, "from: must not contain line breaks"),
        ({"replyTo": "r@x.org\rX: y"}, "replyTo: must not contain line breaks"),
    ],
)
def test_bad_headers_and_injections_are_400_and_send_nothing(
    mail_hub: Hub, smtp_sink: tuple[Mailbox, int], changes: dict[str, Any], message: str
) -> None:
    body = {"to": "a@x.org", "subject": "s", "text": "t", **changes}
    response = mail_hub.client.post(f"{API}/notify/email", json=body, headers=mail_hub.admin)
    assert response.status_code == 400, response.text
    assert response.json()["status"] == "error" and response.json()["message"].startswith(message)
    assert smtp_sink[0].envelopes == []


def test_custom_headers_are_sent(mail_hub: Hub, smtp_sink: tuple[Mailbox, int]) -> None:
    body = {"to": "a@x.org", "subject": "s", "text": "t", "headers": {"X-Site": "substation-01", "X-Prio": "é"}}
    response = mail_hub.client.post(f"{API}/notify/email", json=body, headers=mail_hub.admin)
    assert response.status_code == 200, response.text
    message = smtp_sink[0].message()
    assert message["X-Site"] == "substation-01" and message["From"] == "hub@gridhub.test"
    assert len(message.get_all("From") or []) == 1 and message["Subject"] == "s"
