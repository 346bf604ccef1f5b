"""Notification routes: /notify/email (SMTP, X-FLEX 3.3.1.2.15) and /notify/twitter (retired, 501).

The email body is a subset of Nodemailer's message options (from, to, cc, bcc, replyTo,
subject, text, html, headers); any other option is refused by name. The SMTP server is the
hub's (``[smtp]`` settings); without one the route answers 503.
"""

from __future__ import annotations

import logging
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


def _addresses(value: str | list[str] | None) -> str | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    joined = ", ".join(item.strip() for item in items if item.strip())
    return joined or None


def build_message(body: EmailIn, settings: HubSettings) -> EmailMessage:
    """Build the MIME message for Nodemailer-style options; XflexError 400 when something is missing."""
    sender = body.from_ or settings.smtp_sender
    if not sender:
        raise XflexError(400, "from: no sender given and the hub has no smtp.sender")
    to, cc, bcc = _addresses(body.to), _addresses(body.cc), _addresses(body.bcc)
    if not (to or cc or bcc):
        raise XflexError(400, "to: at least one recipient is needed (to, cc or bcc)")
    if body.text is None and body.html is None:
        raise XflexError(400, "text or html: the message has no content")
    message = EmailMessage()
    for name, value in (body.headers or {}).items():
        message[name] = value
    message["From"] = sender
    if to:
        message["To"] = to
    if cc:
        message["Cc"] = cc
    if bcc:
        message["Bcc"] = bcc
    reply_to = _addresses(body.replyTo)
    if reply_to:
        message["Reply-To"] = reply_to
    message["Subject"] = body.subject
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
