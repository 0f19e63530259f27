"""What the `sla` task sends: its options, the notification templates, the message.

Templates (`subject_template`, `body_template`, `html_template`; `\\n` in the params file
is a line break) use str.format placeholders: {ref} {title} {threshold} ("75%")
{stopwatch} ("TTO") {stopwatch_name} ("time to own") {deadline} {overrun} ("2 min 05 s")
{status} (after escalation) {priority}. In the HTML template the values are escaped.
They are checked once per run (`SlaConfig.from_options`), so a typo fails the run loudly
instead of every ticket. When and in which transaction a notification is queued:
`tasks/sla.py`.
"""

from __future__ import annotations

import html
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cronloop.standard.email_headers import neutralise
from cronloop.standard.outbox import check_address

STOPWATCH_NAMES = {"tto": "time to own", "ttr": "time to resolve"}
PLACEHOLDERS = frozenset(
    {
        "ref",
        "title",
        "threshold",
        "stopwatch",
        "stopwatch_name",
        "deadline",
        "overrun",
        "status",
        "priority",
    }
)

DEFAULT_SUBJECT = "[{ref}] {stopwatch} {threshold} reached: {title}"
DEFAULT_BODY = (
    'Ticket {ref} "{title}" (priority {priority}) has reached {threshold} of its '
    "{stopwatch_name} ({stopwatch}) goal.\n"
    "\n"
    "Deadline: {deadline}\n"
    "Noticed:  {overrun} after the deadline\n"
    "Status:   {status}\n"
)
OPTIONS: dict[str, Any] = {
    "batch_size": 200,
    "notify_75": True,
    "notify_100": True,
    "notify_to": "both",  # team | agent | both (the team alone when no agent is set)
    "sender": "",  # empty: the outbox's default sender
    "subject_template": DEFAULT_SUBJECT,
    "body_template": DEFAULT_BODY,
    "html_template": "",  # empty: text only
}


class SlaConfigError(ValueError):
    """An `sla.*` option is wrong; the run fails at once with this message."""


@dataclass(frozen=True)
class SlaConfig:
    """The task's options, checked once per run so a typo fails loudly, not per ticket."""

    batch_size: int
    notify: Mapping[int, bool]
    notify_to: str
    sender: str | None
    subject: str
    body: str
    html: str | None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SlaConfig:
        opts = {**OPTIONS, **options}
        batch_size = int(opts["batch_size"])
        if batch_size < 1:
            raise SlaConfigError(f"sla.batch_size = {batch_size}: must be at least 1")
        notify_to = str(opts["notify_to"]).strip().lower()
        if notify_to not in ("team", "agent", "both"):
            raise SlaConfigError(f"sla.notify_to = {notify_to!r}: expected team, agent or both")
        sender = str(opts["sender"]).strip() or None
        if sender is not None:
            try:
                check_address(sender, "sla.sender")
            except ValueError as exc:
                raise SlaConfigError(str(exc)) from None
        html_template = _template(opts, "html_template")
        return cls(
            batch_size=batch_size,
            notify={75: bool(opts["notify_75"]), 100: bool(opts["notify_100"])},
            notify_to=notify_to,
            sender=sender,
            subject=_template(opts, "subject_template"),
            body=_template(opts, "body_template"),
            html=html_template or None,
        )


def _template(opts: Mapping[str, Any], key: str) -> str:
    """The template with `\\n` made a line break, checked against the known placeholders
    (no attribute or index access: templates only ever see the values listed above)."""
    text = str(opts[key]).replace("\\n", "\n")
    try:
        names = {field[1] for field in string.Formatter().parse(text) if field[1] is not None}
        unknown = sorted(names - PLACEHOLDERS)
        if unknown:
            known = " ".join(f"{{{p}}}" for p in sorted(PLACEHOLDERS))
            raise SlaConfigError(f"unknown placeholder {{{unknown[0]}}}; known: {known}")
        text.format_map(dict.fromkeys(PLACEHOLDERS, ""))  # a bad format spec, e.g. {ref:%}
    except (ValueError, IndexError) as exc:
        raise SlaConfigError(f"sla.{key}: {exc}") from None
    return text


@dataclass(frozen=True)
class Due:
    """One threshold of one stopwatch whose deadline has passed."""

    sw: str
    pct: int
    deadline: datetime


def notification(
    config: SlaConfig, row: Mapping[Any, Any], due: Due, overrun: float, status: str
) -> dict[str, Any]:
    """The `queue_email` arguments for one threshold of the ticket `row`; `status` is the
    ticket's status after escalation."""
    values = {
        "ref": row["ref"],
        "title": row["title"],
        "threshold": f"{due.pct}%",
        "stopwatch": due.sw.upper(),
        "stopwatch_name": STOPWATCH_NAMES[due.sw],
        "deadline": f"{due.deadline:%Y-%m-%d %H:%M:%S} UTC",
        "overrun": human_duration(overrun),
        "status": status,
        "priority": str(row["priority"]),
    }
    escaped = {key: html.escape(str(value)) for key, value in values.items()}
    return {
        "to": recipients(config.notify_to, row["team_email"], row["agent_email"]),
        # end users write titles: never a line break, control character or encoded word
        "subject": neutralise(config.subject.format_map(values)),
        "body_text": config.body.format_map(values),
        "body_html": config.html.format_map(escaped) if config.html else None,
        "sender": config.sender,
        "headers": {"X-Cronloop-Ticket": str(row["ref"]), "X-Cronloop-SLA": f"{due.sw}-{due.pct}"},
    }


def recipients(notify_to: str, team: str, agent: str | None) -> list[str]:
    """Who gets the notification. `agent` without an agent falls back to the team: a
    threshold nobody hears about is worse than one the whole team hears about."""
    chosen = [team] if notify_to == "team" or not agent else [agent]
    if notify_to == "both" and agent and agent.lower() != team.lower():
        chosen = [team, agent]
    return chosen


def human_duration(seconds: float) -> str:
    """'45 s', '3 min 05 s', '2 h 03 min', '3 d 04 h': readable in an email."""
    s = max(0, int(seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours:02d} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"
