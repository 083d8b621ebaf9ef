"""What a person typed, from the text Slack sends for their message.

Slack sends a message's text as mrkdwn: ``&``, ``<`` and ``>`` arrive as ``&amp;``, ``&lt;`` and ``&gt;``, a
link as ``<https://...>`` or ``<https://...|label>``, a mention as ``<@U123>``. The bot escapes what it posts
(:func:`bot.blocks.escape`), so text taken from Slack is converted once on the way in: otherwise the model
reads entities, a run's input holds Slack's markup, and a quote of the person's words shows ``&lt;`` in Slack.
"""

from __future__ import annotations

import re

#: ``<...>``: a link, a mention (``@U..``), a channel (``#C..``) or a special mention (``!here``).
_MARKUP = re.compile(r"<([^<>|]*)(?:\|([^<>]*))?>")


def from_slack(text: str, *, bot_user: str | None = None) -> str:
    """``text`` as the person typed it; a mention of ``bot_user`` (the bot) is dropped as noise.

    Other people's mentions stay ``<@U123>``, so a model sees whom the person means; a channel becomes
    ``#name``, ``<!here>`` ``@here``, a link ``label (url)`` (or ``url`` when it has no label of its own)."""
    converted = _MARKUP.sub(lambda m: _markup(m.group(1), m.group(2), bot_user), text)
    return unescape(converted).strip()


def unescape(text: str) -> str:
    """Slack's three entities back to characters; ``&amp;`` last, so a typed ``&lt;`` stays ``&lt;``."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _markup(target: str, label: str | None, bot_user: str | None) -> str:
    if target.startswith("@"):
        if bot_user and target[1:] == bot_user:
            return ""
        return f"<{target}>"
    if target.startswith("#"):
        return f"#{label}" if label else f"<{target}>"
    if target.startswith("!"):
        if label:
            return label
        word = target[1:].split("^")[0]
        return f"@{word}"
    if not label or label in (target, target.removeprefix("mailto:")):
        return target.removeprefix("mailto:") if label else target
    return f"{label} ({target})"
