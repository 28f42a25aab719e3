"""The HTTP endpoints the HTTP SMS vendor calls: status callbacks (receipts) and inbound messages (keywords).

`sms_callbacks_app(provider, inbound)` is an aiohttp application to mount under a prefix of the gateway's HTTP
server (e.g. `root.add_subapp("/sms", sms_callbacks_app(...))`):

- `POST /twilio/status`: a status callback (form: MessageSid, MessageStatus, ErrorCode, ...). Answers 403 when
  X-Twilio-Signature does not match, 200 otherwise; a final status becomes a receipt (`HttpSmsProvider.on_status`).
- `POST /twilio/inbound`: an incoming message (form: From, To, Body, ...), signed the same way. The text goes to
  the inbound handler (`SmsKeywords.handle_inbound`) and its reply is answered as TwiML
  (`<Response><Message>reply</Message></Response>`), which the vendor sends back to the handset.

Signatures are checked against the public URL the vendor called (`status_callback_url` / `inbound_url` of the
provider's settings with the query the request came with, e.g. the message id of a status callback; without
one, the URL the request arrived at). Bodies over 16 KiB are refused (413).
"""

from __future__ import annotations

import logging
from xml.sax.saxutils import escape

from aiohttp import web

from omni_gateway.providers.http_sms import HttpSmsProvider, message_id_of
from omni_gateway.sms_keywords import MAX_INBOUND_CHARS, InboundHandler

__all__ = ["MAX_CALLBACK_BYTES", "sms_callbacks_app"]

_log = logging.getLogger(__name__)

MAX_CALLBACK_BYTES = 16 * 1024
"""The largest callback body read."""


async def _verified_form(
    request: web.Request, provider: HttpSmsProvider, public_url: str
) -> list[tuple[str, str]]:
    form = await request.post()
    params = [(name, value) for name, value in form.items() if isinstance(value, str)]
    signature = request.headers.get("X-Twilio-Signature", "")
    url = str(request.url)
    if public_url:
        # The vendor called the public URL with the query it was given (a status callback's message id).
        url = public_url.split("?", 1)[0] + (f"?{request.query_string}" if request.query_string else "")
    if not signature or not provider.signature_valid(url, params, signature):
        _log.warning("%s: a callback with a bad signature refused", provider.name)
        raise web.HTTPForbidden(text="bad signature")
    return params


def sms_callbacks_app(provider: HttpSmsProvider, inbound: InboundHandler | None = None) -> web.Application:
    """The status-callback and inbound-message endpoints of one HTTP SMS provider."""
    app = web.Application(client_max_size=MAX_CALLBACK_BYTES)

    async def status(request: web.Request) -> web.Response:
        params = dict(await _verified_form(request, provider, provider.settings.status_callback_url))
        await provider.on_status(params, message_id_of(request.query))
        return web.Response(status=200)

    async def incoming(request: web.Request) -> web.Response:
        params = dict(await _verified_form(request, provider, provider.settings.inbound_url))
        sender, body = params.get("From", ""), params.get("Body", "")[:MAX_INBOUND_CHARS]
        reply = await inbound(sender, body) if inbound is not None and sender else None
        twiml = f"<Message>{escape(reply)}</Message>" if reply else ""
        return web.Response(
            text=f'<?xml version="1.0" encoding="UTF-8"?><Response>{twiml}</Response>',
            content_type="text/xml",
        )

    app.router.add_post("/twilio/status", status)
    app.router.add_post("/twilio/inbound", incoming)
    return app
