"""Notification routes: /notify/email (SMTP, X-FLEX 3.3.1.2.15) and /notify/twitter (retired, 501).

The email body is a subset of Nodemailer's message options (from, to, cc, bcc, replyTo,
subject, text, html, headers); any other option is refused by name. The SMTP server is the
hub's (``[smtp]`` settings); without one the route answers 503.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from fastapi import APIRouter

from gridhub.hub.auth.policy import require_send_email
from gridhub.hub.deps import Context, CurrentPrincipal
from gridhub.hub.faces.xflex.errors import XflexError
from gridhub.hub.faces.xflex.schemas import EmailIn, ErrorOut, StatusOut, TwitterIn
from gridhub.hub.settings import HubSettings

__all__ = ["TWITTER_RETIRED", "build_message", "router", "send_email"]

logger = logging.getLogger(__name__)
router = APIRouter(tags=["utils"])

TWITTER_RETIRED = (
    "notify/twitter is not available: the Twitter API v1.1 statuses/update endpoint it used (with consumer "
    "and access token keys) was retired by Twitter (now X) in 2023, and posting now needs a paid X API v2 plan. "
    "gridhub does not post tweets; use /api/v2/notify/email or the gateway instead."
)
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (400, 401, 403, 429, 502, 503)}


_HEADER_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]{1,76}$")  # RFC 5322 3.6.8 ftext: printable ASCII but ':'
_OWNED_HEADERS = {
    "from": "from",
    "to": "to",
    "cc": "cc",
    "bcc": "bcc",
    "reply-to": "replyTo",
    "subject": "subject",
    "date": "the hub (sending time)",
    "message-id": "the hub",
    "mime-version": "text and html",
}
"""Headers the message's own options set (lower-case name: the option that owns it)."""


def _addresses(value: str | list[str] | None, name: str) -> str | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    for i, item in enumerate(items):
        _single_line(item, name if isinstance(value, str) else f"{name}[{i}]")
    joined = ", ".join(item.strip() for item in items if item.strip())
    return joined or None


def _single_line(value: str, name: str) -> None:
    if "\r" in value or "\n" in value:
        raise XflexError(400, f"{name}: must not contain line breaks")


def _check_header_name(name: str) -> None:
    where = f"headers.{name}"
    if not _HEADER_NAME.match(name):
        raise XflexError(
            400, f"{where}: not a header field name (1 to 76 printable ASCII characters, no spaces or ':')"
        )
    lower = name.lower()
    owner = _OWNED_HEADERS.get(lower) or ("text and html" if lower.startswith("content-") else None)
    if owner is not None:
        raise XflexError(400, f"{where}: set by {owner}, not in headers")


def _set(message: EmailMessage, header: str, value: str, field: str) -> None:
    """Add a header; XflexError 400 naming the option when the email package refuses the value."""
    try:
        message[header] = value
    except (ValueError, TypeError) as exc:
        raise XflexError(400, f"{field}: {exc}") from None


def build_message(body: EmailIn, settings: HubSettings) -> EmailMessage:
    """Build the MIME message for Nodemailer-style options; XflexError 400 names the option that is wrong.

    Custom ``headers`` must be RFC 5322 field names the other options do not own (From, To, Cc,
    Bcc, Reply-To, Subject, Date, Message-ID, MIME-Version, Content-*); no value may hold a line
    break (a header injection).
    """
    sender = body.from_ or settings.smtp_sender
    if not sender:
        raise XflexError(400, "from: no sender given and the hub has no smtp.sender")
    _single_line(sender, "from")
    _single_line(body.subject, "subject")
    to, cc, bcc = _addresses(body.to, "to"), _addresses(body.cc, "cc"), _addresses(body.bcc, "bcc")
    reply_to = _addresses(body.replyTo, "replyTo")
    if not (to or cc or bcc):
        raise XflexError(400, "to: at least one recipient is needed (to, cc or bcc)")
    if body.text is None and body.html is None:
        raise XflexError(400, "text or html: the message has no content")
    headers = body.headers or {}
    for name, value in headers.items():
        _check_header_name(name)
        _single_line(value, f"headers.{name}")
    message = EmailMessage()
    for name, value in headers.items():
        _set(message, name, value, f"headers.{name}")
    _set(message, "From", sender, "from")
    for header, addresses, field in (
        ("To", to, "to"),
        ("Cc", cc, "cc"),
        ("Bcc", bcc, "bcc"),
        ("Reply-To", reply_to, "replyTo"),
    ):
        if addresses:
            _set(message, header, addresses, field)
    _set(message, "Subject", body.subject, "subject")
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="gridhub")
    if body.text is not None:
        message.set_content(body.text)
        if body.html is not None:
            message.add_alternative(body.html, subtype="html")
    else:
        message.set_content(body.html or "", subtype="html")
    return message


def send_email(message: EmailMessage, settings: HubSettings) -> None:
    """Send a message through the hub's SMTP server; XflexError 502 when the server fails."""
    host, port, timeout = settings.smtp_host, settings.smtp_port, settings.smtp_timeout
    try:
        client: smtplib.SMTP
        if settings.smtp_security == "tls":
            client = smtplib.SMTP_SSL(host, port, timeout=timeout, context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(host, port, timeout=timeout)
        with client:
            if settings.smtp_security == "starttls":
                client.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                client.login(settings.smtp_username, settings.smtp_password)
            refused = client.send_message(message)
    except (smtplib.SMTPException, OSError) as exc:
        logger.warning("sending email through %s:%s failed: %s", host, port, exc)
        raise XflexError(502, f"the SMTP server {host}:{port} did not take the message: {exc}") from None
    if refused:
        raise XflexError(502, f"the SMTP server refused recipient(s): {', '.join(sorted(refused))}")
    logger.info("email %r sent through %s:%s", message["Subject"], host, port)


@router.post("/notify/email", response_model=StatusOut, responses=_ERRORS, operation_id="mail", summary="Send an email")
def email(body: EmailIn, ctx: Context, principal: CurrentPrincipal) -> StatusOut:
    """Send an email through the hub's SMTP server."""
    require_send_email(principal)
    if not ctx.settings.smtp_host:
        raise XflexError(503, "email is not configured: set [smtp] host (and port, security, sender) in the hub config")
    send_email(build_message(body, ctx.settings), ctx.settings)
    return StatusOut()


@router.post(
    "/notify/twitter",
    status_code=501,
    responses={**_ERRORS, 501: {"model": ErrorOut}},
    operation_id="twitter",
    summary="Post a tweet (retired: answers 501)",
)
def twitter(body: TwitterIn, principal: CurrentPrincipal) -> StatusOut:
    """Answer 501: the Twitter API this route used no longer exists."""
    raise XflexError(501, TWITTER_RETIRED)
