"""What a person texts back: STOP and its kin revoke the person's SMS marketing consent in profile, START
grants it again, HELP answers the help text; every keyword gets its confirmation reply, in the language of the
keyword. Both SMS providers hand every inbound (mobile-originated) message to `SmsKeywords.handle_inbound`
and send back what it returns.

A keyword is the whole message, trimmed, in any case, accents and trailing punctuation ignored ("Stop.",
"arrêt" and "ARRET" all match). A message that is no keyword is left alone (no reply). The number is looked up
in identity (`LookupPerson`, type `phone`, E.164); a number nobody holds still gets the confirmation (carriers
require it), with nothing to revoke. The opt-out is answered even if profile cannot be reached after a few tries,
since the SMSC has already been told the message arrived; the failure is logged.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from enum import StrEnum
from typing import TypeVar

import grpc
import phonenumbers
from pydantic import BaseModel, Field

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni.profile.v1 import profile_pb2, profile_pb2_grpc

__all__ = [
    "DEFAULT_KEYWORDS",
    "KEYWORD_OPTIONS",
    "InboundHandler",
    "KeywordAction",
    "KeywordLanguage",
    "SmsKeywords",
    "keyword_handler",
    "to_e164",
]

_log = logging.getLogger(__name__)

InboundHandler = Callable[[str, str], Awaitable[str | None]]
"""`handle_inbound(phone, text) -> reply`: what a provider calls for each inbound message (None: no reply)."""

MAX_INBOUND_CHARS = 1600
"""Longer inbound texts are not keywords and are not looked at further."""

_T = TypeVar("_T")

_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class KeywordAction(StrEnum):
    STOP = "stop"
    START = "start"
    HELP = "help"


class KeywordLanguage(BaseModel):
    """The keywords of one language and the replies sent in it."""

    stop: list[str] = Field(default_factory=list)
    start: list[str] = Field(default_factory=list)
    help: list[str] = Field(default_factory=list)
    stop_reply: str
    start_reply: str
    help_reply: str


DEFAULT_KEYWORDS: dict[str, KeywordLanguage] = {
    "en": KeywordLanguage(
        stop=["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"],
        start=["START", "UNSTOP", "YES", "SUBSCRIBE"],
        help=["HELP", "INFO"],
        stop_reply="You are unsubscribed and will receive no more marketing messages. Reply START to resubscribe.",
        start_reply="You are subscribed to our messages again. Reply STOP to unsubscribe, HELP for help.",
        help_reply="Reply STOP to unsubscribe, START to resubscribe. Msg&data rates may apply.",
    ),
    "de": KeywordLanguage(
        stop=["STOPP", "ABMELDEN", "ABBESTELLEN"],
        start=["ANMELDEN"],
        help=["HILFE"],
        stop_reply="Sie sind abgemeldet und erhalten keine Werbenachrichten mehr. Antworten Sie START zum Anmelden.",
        start_reply="Sie sind wieder angemeldet. Antworten Sie STOPP zum Abmelden.",
        help_reply="Antworten Sie STOPP zum Abmelden, START zum Anmelden.",
    ),
    "da": KeywordLanguage(
        stop=["AFMELD", "AFMELDE"],
        start=["TILMELD"],
        help=["HJÆLP"],
        stop_reply="Du er afmeldt og modtager ikke flere markedsføringsbeskeder. Svar START for at tilmelde dig igen.",
        start_reply="Du er tilmeldt igen. Svar AFMELD for at afmelde dig.",
        help_reply="Svar AFMELD for at afmelde dig, START for at tilmelde dig.",
    ),
    "no": KeywordLanguage(
        stop=["AVMELD"],
        start=[],
        help=[],
        stop_reply="Du er avmeldt og får ingen flere markedsføringsmeldinger. Svar START for å melde deg på igjen.",
        start_reply="Du er påmeldt igjen. Svar STOPP for å melde deg av.",
        help_reply="Svar STOPP for å melde deg av, START for å melde deg på.",
    ),
    "fr": KeywordLanguage(
        stop=["ARRÊT", "DESABONNER", "DESINSCRIRE"],
        start=["ABONNER"],
        help=["AIDE"],
        stop_reply="Vous êtes désabonné et ne recevrez plus de messages promotionnels. Répondez START pour vous réabonner.",
        start_reply="Vous êtes de nouveau abonné. Répondez ARRET pour vous désabonner.",
        help_reply="Répondez ARRET pour vous désabonner, START pour vous réabonner.",
    ),
    "es": KeywordLanguage(
        stop=["BAJA", "PARAR", "CANCELAR"],
        start=["ALTA"],
        help=["AYUDA"],
        stop_reply="Te has dado de baja y no recibirás más mensajes promocionales. Responde ALTA para volver a suscribirte.",
        start_reply="Te has vuelto a suscribir. Responde BAJA para darte de baja.",
        help_reply="Responde BAJA para darte de baja, ALTA para suscribirte.",
    ),
}
"""Keywords per language, tried in this order (English first, so STOP and START answer in English)."""


def _fold(text: str) -> str:
    """Upper case, accents off, surrounding blanks and punctuation off: how a keyword is compared."""
    decomposed = unicodedata.normalize("NFKD", text.strip())
    plain = "".join(char for char in decomposed if not unicodedata.combining(char))
    plain = plain.replace("Æ", "AE").replace("æ", "ae").replace("Ø", "O").replace("ø", "o")
    return plain.strip(" \t\r\n.!?,;:'\"").upper()


def to_e164(phone: str, default_region: str | None = None) -> str | None:
    """A number as an SMSC or SMS API gives it ("4915112345678", "+49 151 ...") in E.164, or None when it is
    not a valid number. Digits alone are read as international (SMSCs drop the leading +)."""
    raw = phone.strip()
    if raw and raw[0] != "+" and raw.isdigit() and default_region is None:
        raw = "+" + raw
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class SmsKeywords:
    """Answers inbound SMS keywords, changing SMS consent in profile for the person identity finds by number."""

    def __init__(
        self,
        identity: identity_pb2_grpc.IdentityServiceAsyncStub,
        profile: profile_pb2_grpc.ProfileServiceAsyncStub,
        *,
        keywords: Mapping[str, KeywordLanguage] | None = None,
        call_timeout_s: float = 5.0,
        attempts: int = 3,
        retry_delay_s: float = 0.2,
    ) -> None:
        self._identity = identity
        self._profile = profile
        self._languages = dict(keywords if keywords is not None else DEFAULT_KEYWORDS)
        self._timeout = call_timeout_s
        self._attempts = attempts
        self._retry_delay = retry_delay_s
        self._table: dict[str, tuple[KeywordAction, str]] = {}
        for language, words in self._languages.items():
            for action, listed in (
                (KeywordAction.STOP, words.stop),
                (KeywordAction.START, words.start),
                (KeywordAction.HELP, words.help),
            ):
                for word in listed:
                    self._table.setdefault(_fold(word), (action, language))

    def classify(self, text: str) -> tuple[KeywordAction, str] | None:
        """The keyword's action and language, or None when the text is no keyword."""
        if len(text) > MAX_INBOUND_CHARS:
            return None
        return self._table.get(_fold(text))

    def reply(self, action: KeywordAction, language: str) -> str:
        words = self._languages[language]
        return {
            KeywordAction.STOP: words.stop_reply,
            KeywordAction.START: words.start_reply,
            KeywordAction.HELP: words.help_reply,
        }[action]

    async def handle_inbound(self, phone: str, text: str) -> str | None:
        """Act on an inbound message from `phone` and return the reply to send back (None: no reply)."""
        found = self.classify(text)
        if found is None:
            return None
        action, language = found
        if action is not KeywordAction.HELP:
            number = to_e164(phone)
            if number is None:
                _log.warning("sms keyword %s from an invalid number, nothing changed", action.value)
            else:
                state = (
                    profile_pb2.CONSENT_STATE_REVOKED
                    if action is KeywordAction.STOP
                    else profile_pb2.CONSENT_STATE_GRANTED
                )
                try:
                    await self._set_consent(number, state)
                except grpc.aio.AioRpcError as error:
                    _log.error("sms keyword %s: consent not recorded: %s", action.value, error.code().name)
        return self.reply(action, language)

    async def _call(self, call: Callable[[], Awaitable[_T]]) -> _T:
        for attempt in range(1, self._attempts + 1):
            try:
                return await call()
            except grpc.aio.AioRpcError as error:
                if error.code() not in _RETRYABLE or attempt == self._attempts:
                    raise
                await asyncio.sleep(self._retry_delay * attempt)
        raise AssertionError("unreachable")

    async def _set_consent(self, number: str, state: profile_pb2.ConsentState.ValueType) -> None:
        identifier = common_pb2.Identifier(type="phone", value=number)
        try:
            found = await self._call(
                lambda: self._identity.LookupPerson(
                    identity_pb2.LookupPersonRequest(identifier=identifier), timeout=self._timeout
                )
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                _log.info("sms keyword from a number no person holds, nothing changed")
                return
            raise
        request = profile_pb2.SetConsentRequest(
            person_id=found.person.id,
            consent=profile_pb2.Consent(
                channel=common_pb2.CHANNEL_SMS,
                state=state,
                purpose=profile_pb2.CONSENT_PURPOSE_MARKETING,
                source="sms_keyword",
            ),
        )
        await self._call(lambda: self._profile.SetConsent(request, timeout=self._timeout))


def keywords_from(
    languages: Sequence[str], overrides: Mapping[str, KeywordLanguage] | None = None
) -> dict[str, KeywordLanguage]:
    """The keyword table for the given languages (in order), each from `overrides` or the defaults."""
    table: dict[str, KeywordLanguage] = {}
    for language in languages:
        source = (overrides or {}).get(language) or DEFAULT_KEYWORDS.get(language)
        if source is None:
            raise ValueError(f"no SMS keywords for language {language!r}")
        table[language] = source
    return table


KEYWORD_OPTIONS = ("keyword_languages", "keywords")
"""The options of an SMS provider's registry entry that configure its keywords, not the provider: the
languages recognised, in the order tried (default: every language of DEFAULT_KEYWORDS), and keywords and
replies per language replacing the defaults' entry ({"en": {"stop": [...], "stop_reply": "..."}})."""


def keyword_handler(
    options: Mapping[str, object], defaults: Mapping[str, object]
) -> tuple[dict[str, object], SmsKeywords | None]:
    """Split an SMS provider's registry options into its own and its keywords' (KEYWORD_OPTIONS), and make
    its keyword handler from identity and profile, which the gateway hands every provider in the registry's
    defaults (`identity`, `profile`: their gRPC stubs). Without them (a provider built alone) inbound
    messages get no answer: None. Raises ValueError for a language without keywords."""
    own = {key: value for key, value in options.items() if key not in KEYWORD_OPTIONS}
    languages = options.get("keyword_languages", list(DEFAULT_KEYWORDS))
    overrides = options.get("keywords") or {}
    if not isinstance(languages, list) or not isinstance(overrides, Mapping):
        raise ValueError("keyword_languages is a list of languages, keywords an object per language")
    table = keywords_from(
        [str(language) for language in languages],
        {str(k): KeywordLanguage.model_validate(v) for k, v in overrides.items()},
    )
    identity, profile = defaults.get("identity"), defaults.get("profile")
    if identity is None or profile is None:
        return own, None
    return own, SmsKeywords(identity, profile, keywords=table)  # type: ignore[arg-type]
