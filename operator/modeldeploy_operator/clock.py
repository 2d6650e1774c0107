"""Time as the Kubernetes API writes it: RFC 3339 in UTC, seconds for conditions and status, microseconds
for Leases and Events. The pure modules never read the clock; the callers pass `now` in."""

from __future__ import annotations

import datetime as dt

SECONDS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_now() -> dt.datetime:
    """Now, to the second: what status timestamps can hold, so a decision compares what it will store."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def precise_now() -> dt.datetime:
    """Now, unrounded: for timers, where a rounded clock would wake early."""
    return dt.datetime.now(dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    """Seconds precision: what conditions' lastTransitionTime and status timestamps carry."""
    return moment.astimezone(dt.UTC).strftime(SECONDS_FORMAT)


def parse_rfc3339(text: str) -> dt.datetime:
    """A seconds-precision timestamp written by `rfc3339`, back to an aware datetime."""
    return dt.datetime.strptime(text, SECONDS_FORMAT).replace(tzinfo=dt.UTC)


def now_rfc3339() -> str:
    return rfc3339(utc_now())


def micro_time() -> str:
    """Microsecond precision (metav1.MicroTime): Lease renewals and Event times."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
