"""What a person typed, from the text Slack sends (bot/slack/text.py): Slack's escaping and markup undone."""

from __future__ import annotations

import pytest

from bot.slack.text import from_slack


@pytest.mark.parametrize(("sent", "typed"), [
    ("is 1 &lt; 2 &amp;&amp; 3 &gt; 2?", "is 1 < 2 && 3 > 2?"),
    ("I typed &amp;lt; literally", "I typed &lt; literally"),  # "&amp;" last: a typed entity stays as typed
    ("see <https://example.com/q?a=1&amp;b=2>", "see https://example.com/q?a=1&b=2"),
    ("see <https://example.com|the docs>", "see the docs (https://example.com)"),
    ("mail <mailto:ops@example.com|ops@example.com>", "mail ops@example.com"),
    ("ask <#C0GENERAL|general>", "ask #general"),
    ("<!here> and <!subteam^S0OPS|@ops>", "@here and @ops"),
])
def test_slack_markup_becomes_what_the_person_typed(sent: str, typed: str) -> None:
    assert from_slack(sent) == typed


def test_only_the_bots_own_mention_is_dropped() -> None:
    sent = "<@U0BOT> who should review this, <@U0ALICE> or <@U0CAROL|carol>?"
    assert from_slack(sent, bot_user="U0BOT") == "who should review this, <@U0ALICE> or <@U0CAROL>?"
    assert from_slack(sent) == "<@U0BOT> who should review this, <@U0ALICE> or <@U0CAROL>?"
