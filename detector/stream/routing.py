"""Which model group a stream belongs to, and under which stream id.

Groups are tried in configuration order and the first whose pattern matches wins; a stream
no rule matches goes to the group named "default" (configured, or else implicit: per-field
layout with the [model] sizes). Patterns are globs (fnmatch, case-sensitive) or regular
expressions (``re.fullmatch``) on the stream id.

A group's layout decides what a stream is. "per_field": every field of a sample is its own
stream, ``stream_id(name, tags, field)``. "vector": the group's ``fields`` of one sample form
one stream ``vector_id(name, tags)`` with D = len(fields); the sample's other fields go on to
the next rules, as per-field streams of whichever group takes them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from detector.config import GroupSettings
from detector.io.formats import stream_id, vector_id

DEFAULT_GROUP = "default"
_CACHE_LIMIT = 1 << 20  # resolved (name, tags, field) triples kept; cleared when full


@dataclass(frozen=True, slots=True)
class Route:
    group: int  # index into Router.groups
    stream: str  # the stream id within that group
    id_bytes: int  # len of the id in UTF-8, checked against the pipeline's limit per point

    @classmethod
    def to(cls, group: int, stream: str) -> Route:
        return cls(group, stream, len(stream.encode("utf-8", "surrogatepass")))


def _matcher(group: GroupSettings) -> Callable[[str], bool]:
    if group.match_kind == "regex":
        compiled = [re.compile(p) for p in group.match]
        return lambda s: any(r.fullmatch(s) for r in compiled)
    return lambda s: any(fnmatch.fnmatchcase(s, p) for p in group.match)


class Router:
    """Resolves (name, tags, field) to a Route; results are cached, rules run once per key."""

    def __init__(self, groups: Sequence[GroupSettings]) -> None:
        configured = list(groups)
        names = [g.name for g in configured]
        if DEFAULT_GROUP in names:
            self.groups = configured
        else:
            self.groups = [*configured, GroupSettings(name=DEFAULT_GROUP)]
        self.default = [g.name for g in self.groups].index(DEFAULT_GROUP)
        self._matchers = [_matcher(g) for g in self.groups]
        self._cache: dict[tuple[str, str, str], Route | None] = {}

    def route(self, name: str, tags: str, field: str) -> Route | None:
        """The route of one field of a sample; None only when the default group is a
        vector group that does not list the field."""
        key = (name, tags, field)
        found = self._cache.get(key, self)  # self: a sentinel that cannot be a value
        if found is not self:
            return found  # type: ignore[return-value]
        route = self._resolve(name, tags, field)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()  # a cardinality explosion must not grow this without bound
        self._cache[key] = route
        return route

    def _resolve(self, name: str, tags: str, field: str) -> Route | None:
        for index, (group, matches) in enumerate(zip(self.groups, self._matchers, strict=True)):
            if index == self.default:
                continue
            if group.layout == "vector":
                vid = vector_id(name, tags)
                if field in group.fields and matches(vid):
                    return Route.to(index, vid)
            else:
                sid = stream_id(name, tags, field)
                if matches(sid):
                    return Route.to(index, sid)
        group = self.groups[self.default]
        if group.layout == "vector":
            return Route.to(self.default, vector_id(name, tags)) if field in group.fields else None
        return Route.to(self.default, stream_id(name, tags, field))
