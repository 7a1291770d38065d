"""One function per PS3.4 C.2.2.2 matching type, each turning a key's value into a SQL condition.

Which type applies follows the value and the VR: wildcards only for string VRs, ranges only
for DA/TM/DT, lists (backslash) for any VR. Text comparisons are case-sensitive; callers pass
the case-folded column and value for PN when names match case-insensitively.
"""

from __future__ import annotations

import re
from functools import reduce
from operator import or_
from typing import Any

from peewee import Expression, Field

STRING_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
NUMBER_VRS = {"IS", "US", "UL", "SS", "SL"}
_DATE_RE = re.compile(r"\d{8}")
_TIME_RE = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_TIME_CEILING = "235959.999999"


class InvalidQuery(ValueError):
    """The identifier cannot be a query: bad level, missing unique key, malformed value."""


class UnsupportedQuery(InvalidQuery):
    """A valid request this node does not carry out (sequence matching, for instance)."""


def is_universal(value: str) -> bool:
    """Universal matching (C.2.2.2.3): an empty value, or a lone ``*``, matches everything."""
    return value.strip() in ("", "*")


def condition_for(column: Field, vr: str, value: str, keyword: str, postgres: bool) -> Any:
    """The condition for one matching key: a list is any of its items (C.2.2.2.2 for UIDs,
    C.2.2.2.6 generally); each item is single value, wildcard or range matching."""
    items = [v.strip() for v in value.split("\\")]
    if any(is_universal(v) for v in items):
        raise InvalidQuery(f"{keyword}: an empty item in the list {value!r}")
    if vr == "UI" or (vr not in ("DA", "TM", "DT") and not any(_has_wildcard(v) for v in items)):
        if vr == "UI":
            items = [v.rstrip("\x00") for v in items]
        values = [_single_value(v, vr, keyword) for v in items]
        return column == values[0] if len(values) == 1 else column.in_(values)
    return reduce(or_, [_item_condition(column, vr, v, keyword, postgres) for v in items])


def _item_condition(column: Field, vr: str, item: str, keyword: str, postgres: bool) -> Any:
    if vr == "DA":
        return date_condition(column, item, keyword)
    if vr == "TM":
        return time_condition(column, item, keyword)
    if vr == "DT":
        raise UnsupportedQuery(f"{keyword}: datetime matching is not supported")
    if vr in STRING_VRS and _has_wildcard(item):
        return wildcard_condition(column, item, postgres)
    return column == _single_value(item, vr, keyword)


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _single_value(value: str, vr: str, keyword: str) -> Any:
    """Single value matching (C.2.2.2.1): numbers compare as numbers, text exactly."""
    if vr in NUMBER_VRS:
        try:
            return int(value)
        except ValueError:
            raise InvalidQuery(f"{keyword}: {value!r} is not an integer") from None
    return value


def wildcard_condition(column: Field, pattern: str, postgres: bool) -> Any:
    """Wildcard matching (C.2.2.2.4): ``*`` any run of characters, ``?`` exactly one.

    SQLite's GLOB and PostgreSQL's LIKE are both case-sensitive, and a constant prefix lets
    SQLite use the column's index.
    """
    if postgres:
        escaped = "".join("\\" + c if c in "\\%_" else c for c in pattern)
        return Expression(column, "LIKE", escaped.replace("*", "%").replace("?", "_"))
    return Expression(column, "GLOB", pattern.replace("[", "[[]"))


def _range(value: str, keyword: str) -> tuple[str | None, str | None]:
    if value.count("-") > 1:
        raise InvalidQuery(f"{keyword}: {value!r} is not a range")
    if "-" not in value:
        return value, value
    low, high = value.split("-")
    if not low and not high:
        raise InvalidQuery(f"{keyword}: {value!r} is an empty range")
    return low or None, high or None


def parse_date_range(value: str, keyword: str) -> tuple[str | None, str | None]:
    """``D``, ``D1-D2``, ``-D2`` or ``D1-`` with D as YYYYMMDD (C.2.2.2.5)."""
    low, high = _range(value.replace(".", ""), keyword)
    for part in (low, high):
        if part is not None and not _DATE_RE.fullmatch(part):
            raise InvalidQuery(f"{keyword}: {value!r} is not a date (YYYYMMDD) or date range")
    if low and high and low > high:
        raise InvalidQuery(f"{keyword}: the range {value!r} ends before it starts")
    return low, high


def parse_time_range(value: str, keyword: str) -> tuple[str | None, str | None]:
    """``T``, ``T1-T2``, ``-T2`` or ``T1-`` with T as HH[MM[SS[.F]]]; the upper bound is
    filled up so that ``-12`` includes 12:59:59."""
    low, high = _range(value.replace(":", ""), keyword)
    for part in (low, high):
        if part is not None and not _TIME_RE.fullmatch(part):
            raise InvalidQuery(f"{keyword}: {value!r} is not a time (HHMMSS) or time range")
    if high is not None:
        high = high + _TIME_CEILING[len(high):]
    return low, high


def date_condition(column: Field, value: str, keyword: str) -> Any:
    """Single date or date range matching (C.2.2.2.5); dates compare as YYYYMMDD strings."""
    low, high = parse_date_range(value, keyword)
    if low == high:
        return column == low
    return _between(column, low, high)


def time_condition(column: Field, value: str, keyword: str) -> Any:
    """Time matching (C.2.2.2.5): a single time matches every time within its precision."""
    low, high = parse_time_range(value, keyword)
    if "-" not in value:  # 1010 matches 101012 and 101012.5 too
        return (column >= low) & (column <= high)
    if low and high and low > high:  # only a combined date-time range may wrap midnight
        raise InvalidQuery(f"{keyword}: the range {value!r} ends before it starts")
    return _between(column, low, high)


def combined_datetime_condition(date_column: Field, time_column: Field, date_value: str,
                                time_value: str) -> Any:
    """Date and time matched as one datetime (C.2.2.2.5.1): ``StudyDate=20210101-20210102``
    with ``StudyTime=1800-0800`` means from Jan 1st 18:00 to Jan 2nd 08:00."""
    d_low, d_high = parse_date_range(date_value, "date")
    t_low, t_high = parse_time_range(time_value, "time")
    condition = None
    if d_low is not None:
        lower = date_column >= d_low if t_low is None else (
            (date_column > d_low) | ((date_column == d_low) & (time_column >= t_low)))
        condition = lower
    if d_high is not None:
        upper = date_column <= d_high if t_high is None else (
            (date_column < d_high) | ((date_column == d_high) & (time_column <= t_high)))
        condition = upper if condition is None else condition & upper
    return condition


def _between(column: Field, low: str | None, high: str | None) -> Any:
    if low is not None and high is not None:
        return (column >= low) & (column <= high)
    if low is not None:
        return column >= low
    return column <= high
