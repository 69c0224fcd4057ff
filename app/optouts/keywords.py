"""What an inbound message means for the opt-out list: exact keywords only.

The text is trimmed, case-folded and stripped of inner whitespace (so "Stop all" is
STOPALL), then compared with the keywords. A sentence that merely contains one ("please
stop texting me") is kept but changes nothing: whether such a message revokes consent is
for people to judge, not for a pattern. Plivo's own `MessageIntent` decides first when
it is `optout` or `optin`.
"""

from __future__ import annotations

from app.store.optouts import Action

OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "UNSUB", "REVOKE", "OPTOUT"}
)
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP"})
_BY_INTENT: dict[str, Action] = {"optout": "optout", "optin": "optin"}


def normalise(text: str) -> str:
    """Trimmed, case-folded, no whitespace at all: the form keywords are compared in."""
    return "".join(text.split()).casefold()


_OUT = frozenset(k.casefold() for k in OPT_OUT_KEYWORDS)
_IN = frozenset(k.casefold() for k in OPT_IN_KEYWORDS)


def meaning(text: str | None, intent: str | None) -> Action | None:
    """`optout`, `optin`, or None (HELP, a question, a sentence: stored, no change)."""
    by_intent = _BY_INTENT.get((intent or "").strip().casefold())
    if by_intent is not None:
        return by_intent
    word = normalise(text or "")
    if word in _OUT:
        return "optout"
    if word in _IN:
        return "optin"
    return None
