"""The site's seat options file (``DATA/options.toml``): who may take which seats. Pure.

The site administrator's counterpart of an RLM or FlexNet options file, in TOML
(docs/spec/options.md, version 1): per feature, seats **reserved** for a user, host or
group; **maximums** per user, host or group; **include** and **exclude** lists. The
parser takes text and returns :class:`SeatOptions` or raises :class:`ConfigError`
naming the line; :meth:`SeatOptions.admit` decides one checkout from the live leases.

Identities: ``group`` is the group of the site API key the request presented
(authenticated); ``user`` and ``host`` are what the client declares (asserted, not
authenticated: a client can claim any user or host name, so limits keyed on them hold
against honest clients only, and reservations for them are only as strong as the
claim).

Invariants (checked by the property tests):

* a checkout admitted here never leaves fewer free seats than the reservations that
  the requester does not match still hold open;
* a user, host or group never holds more live leases of a feature than its maximum;
* a request matching an exclude entry, or matching no include entry where the feature
  has any, is refused.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from meterbox.errors import ConfigError, PolicyDenied
from meterbox.server._core.seats import SeatLease

OPTIONS_VERSION: Final = 1
Kind = Literal["user", "host", "group"]
KINDS: Final[tuple[Kind, ...]] = ("user", "host", "group")
_NAME = re.compile(r"^[^\s\x00-\x1f]{1,200}$")


@dataclass(frozen=True)
class Identity:
    """Who asks for a seat: a declared user and host, and the key's group."""

    user: str | None = None
    host: str | None = None
    group: str | None = None

    def value(self, kind: Kind) -> str | None:
        return {"user": self.user, "host": self.host, "group": self.group}[kind]


def lease_identity(lease: SeatLease) -> Identity:
    return Identity(user=lease.user, host=lease.hostname, group=lease.group)


@dataclass(frozen=True)
class Rule:
    """``seats`` for (reserve) or at most (max) the holders whose ``kind`` is ``name``."""

    seats: int
    kind: Kind
    name: str
    line: int = 0

    def matches(self, who: Identity) -> bool:
        return who.value(self.kind) == self.name

    def describe(self) -> str:
        return f"{self.kind} {self.name!r}"


@dataclass(frozen=True)
class FeatureOptions:
    reserve: tuple[Rule, ...] = ()
    max: tuple[Rule, ...] = ()
    #: Every user (host, group) may hold at most this many seats; None: no such limit.
    max_per: Mapping[Kind, int] = field(default_factory=dict)
    include: Mapping[Kind, frozenset[str]] = field(default_factory=dict)
    exclude: Mapping[Kind, frozenset[str]] = field(default_factory=dict)


def reservation_fill(rules: Sequence[Rule], leases: Iterable[SeatLease]) -> list[int]:
    """How many of each reservation's seats the live ``leases`` fill.

    Each lease fills at most one reservation: the first, in file order, that it matches
    and that still has room (leases taken in the order they were issued), so one lease
    never counts for two reservations.
    """
    fill = [0] * len(rules)
    for lease in sorted(leases, key=lambda x: (x.issued_at, x.lease_id)):
        who = lease_identity(lease)
        for i, rule in enumerate(rules):
            if fill[i] < rule.seats and rule.matches(who):
                fill[i] += 1
                break
    return fill


@dataclass(frozen=True)
class SeatOptions:
    """The parsed options file: per feature, its rules; features not named are unrestricted."""

    features: Mapping[str, FeatureOptions] = field(default_factory=dict)
    source: str = "no options file"

    def admit(self, feature: str, who: Identity, live: Sequence[SeatLease], capacity: int) -> None:
        """Raise :class:`PolicyDenied` unless ``who`` may take a new seat of ``feature``.

        ``live`` are the feature's live leases, ``capacity`` its seats plus overdraft.
        Only the policy is decided here; whether a seat is free is the seat book's.
        """
        opts = self.features.get(feature)
        if opts is None:
            return
        for kind in KINDS:
            value = who.value(kind)
            if value is not None and value in opts.exclude.get(kind, frozenset()):
                raise _denied(feature, f"{kind} {value!r} is excluded", self.source)
        if opts.include and not any(
            who.value(kind) in names for kind, names in opts.include.items()
        ):
            listed = "; ".join(f"{k}s {', '.join(sorted(v))}" for k, v in opts.include.items())
            raise _denied(feature, f"only {listed} may use it", self.source)
        holders = [lease_identity(x) for x in live]
        for kind, limit in opts.max_per.items():
            value = who.value(kind)
            if value is not None and sum(h.value(kind) == value for h in holders) >= limit:
                raise _denied(
                    feature, f"{kind} {value!r} already holds {limit} (the most each may)",
                    self.source,
                )  # fmt: skip
        for rule in opts.max:
            if rule.matches(who) and sum(rule.matches(h) for h in holders) >= rule.seats:
                raise _denied(
                    feature,
                    f"{rule.describe()} already holds {rule.seats} (its maximum, line {rule.line})",
                    self.source,
                )
        if opts.reserve:
            fill = reservation_fill(opts.reserve, live)
            # Seats reserved for others and not yet taken by them are not free for ``who``.
            held_open = sum(
                r.seats - f for r, f in zip(opts.reserve, fill, strict=True) if not r.matches(who)
            )
            if len(live) + held_open >= capacity and len(live) < capacity:
                others = ", ".join(r.describe() for r in opts.reserve if not r.matches(who))
                raise _denied(
                    feature,
                    f"the {capacity - len(live)} free seat(s) are reserved for {others}",
                    self.source,
                )


def _denied(feature: str, why: str, source: str) -> PolicyDenied:
    return PolicyDenied(
        f"The site's options refuse a seat of {feature!r}: {why}",
        expected="a checkout the site's seat options allow",
        found=why,
        hint=f"Ask the site administrator (the rules are in {source})",
    )


# --------------------------------------------------------------------- parsing
_FEATURE_KEYS: Final = (
    "reserve",
    "max",
    "max_per_user",
    "max_per_host",
    "max_per_group",
    "include_users",
    "include_hosts",
    "include_groups",
    "exclude_users",
    "exclude_hosts",
    "exclude_groups",
)
_RULE_KEYS: Final = ("seats", "user", "host", "group")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')\s*=")


def _unquote(part: str) -> str:
    part = part.strip()
    return part[1:-1] if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'" else part


def _split_dotted(text: str) -> tuple[str, ...]:
    # Dotted TOML keys with optional quotes: feature."my cad".reserve
    return tuple(_unquote(p) for p in re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', text))


def _lines(text: str) -> dict[tuple[Any, ...], int]:
    """Line numbers of table headers and keys: (path..., index?, key) -> line."""
    where: dict[tuple[Any, ...], int] = {}
    counts: dict[tuple[str, ...], int] = {}
    table: tuple[Any, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            path = _split_dotted(header.group(2))
            if header.group(1) == "[[":
                index = counts.get(path, 0)
                counts[path] = index + 1
                table = (*path, index)
            else:
                table = path
            where.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            where.setdefault((*table, _unquote(key.group(1))), number)
    return where


class _Reader:
    def __init__(self, text: str, source: str) -> None:
        self.where = _lines(text)
        self.source = source

    def line(self, *path: Any) -> int:
        for end in range(len(path), 0, -1):
            if (found := self.where.get(tuple(path[:end]))) is not None:
                return found
        return 0

    def fail(
        self,
        path: tuple[Any, ...],
        problem: str,
        expected: str,
        found: str,
        hint: str = "Fix that line (docs/spec/options.md), then run 'meterbox server reload'",
    ) -> ConfigError:
        return ConfigError(
            problem,
            expected=expected,
            found=f"{found} at {self.source}:{self.line(*path)}",
            hint=hint,
        )

    def unknown(self, path: tuple[Any, ...], key: str, known: Sequence[str]) -> ConfigError:
        import difflib

        near = difflib.get_close_matches(key, known, n=1)
        args = ((*path, key), f"Unknown key {key!r} in the options file",
                "one of " + ", ".join(known), repr(key))  # fmt: skip
        return self.fail(*args, hint=f"did you mean {near[0]!r}?") if near else self.fail(*args)

    def count(self, path: tuple[Any, ...], value: object, *, low: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise self.fail(
                path,
                f"{'.'.join(map(str, path))} is not a usable number of seats",
                f"an integer >= {low}",
                repr(value),
            )
        return value

    def names(self, path: tuple[Any, ...], value: object) -> frozenset[str]:
        if not isinstance(value, list) or not all(
            isinstance(v, str) and _NAME.fullmatch(v) for v in value
        ):
            raise self.fail(
                path,
                f"{'.'.join(map(str, path))} is not a list of names",
                'a list of names without spaces, e.g. ["alice", "bob"]',
                repr(value)[:80],
            )
        return frozenset(value)

    def rule(self, path: tuple[Any, ...], value: object) -> Rule:
        if not isinstance(value, dict):
            raise self.fail(path, "A rule is not a table", "[[feature.NAME.reserve]]", repr(value))
        for key in value:
            if key not in _RULE_KEYS:
                raise self.unknown(path, key, _RULE_KEYS)
        if "seats" not in value:
            raise self.fail(path, "A rule has no seats", "seats = N", "no 'seats' key")
        seats = self.count((*path, "seats"), value["seats"], low=1)
        given = [k for k in KINDS if k in value]
        if len(given) != 1:
            raise self.fail(
                path,
                "A rule names exactly one of user, host or group",
                'one of user = "...", host = "..." or group = "..."',
                f"{len(given)} of them",
            )
        kind = given[0]
        name = value[kind]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise self.fail((*path, kind), f"The rule's {kind} is not a name", "a name", repr(name))
        return Rule(seats=seats, kind=kind, name=name, line=self.line(*path))

    def feature(self, name: str, value: object) -> FeatureOptions:
        path: tuple[Any, ...] = ("feature", name)
        if not isinstance(value, dict):
            raise self.fail(
                path, f"feature.{name} is not a table", f"[feature.{name}]", repr(value)
            )
        for key in value:
            if key not in _FEATURE_KEYS:
                raise self.unknown(path, key, _FEATURE_KEYS)
        rules: dict[str, tuple[Rule, ...]] = {}
        for key in ("reserve", "max"):
            items = value.get(key, [])
            if not isinstance(items, list):
                raise self.fail((*path, key), f"{key} is not a list of tables",
                                f"[[feature.{name}.{key}]] tables", repr(items)[:80])  # fmt: skip
            rules[key] = tuple(self.rule((*path, key, i), item) for i, item in enumerate(items))
        max_per: dict[Kind, int] = {}
        include: dict[Kind, frozenset[str]] = {}
        exclude: dict[Kind, frozenset[str]] = {}
        for kind in KINDS:
            if (n := value.get(f"max_per_{kind}")) is not None:
                max_per[kind] = self.count((*path, f"max_per_{kind}"), n, low=0)
            if (v := value.get(f"include_{kind}s")) is not None:
                include[kind] = self.names((*path, f"include_{kind}s"), v)
            if (v := value.get(f"exclude_{kind}s")) is not None:
                exclude[kind] = self.names((*path, f"exclude_{kind}s"), v)
        return FeatureOptions(
            reserve=rules["reserve"],
            max=rules["max"],
            max_per=max_per,
            include={k: v for k, v in include.items() if v},
            exclude=exclude,
        )


def parse_options(text: str, source: str = "options.toml") -> SeatOptions:
    """Parse an options file; :class:`ConfigError` names the line of anything wrong."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            "The options file is not valid TOML",
            expected="TOML as in docs/spec/options.md",
            found=f"{source}: {exc}",
            hint="Fix the line named above, then run 'meterbox server reload'",
        ) from None
    reader = _Reader(text, source)
    for key in doc:
        if key not in ("version", "feature"):
            raise reader.unknown((), key, ("version", "feature"))
    if doc.get("version") != OPTIONS_VERSION:
        raise reader.fail(
            ("version",),
            "Unknown options file version",
            f"version = {OPTIONS_VERSION} on the first lines",
            repr(doc.get("version", "no version")),
        )
    features = doc.get("feature", {})
    if not isinstance(features, dict):
        raise reader.fail(("feature",), "feature is not a table", "[feature.NAME]", repr(features))
    return SeatOptions(
        features={name: reader.feature(name, value) for name, value in features.items()},
        source=source,
    )


__all__ = [
    "OPTIONS_VERSION",
    "FeatureOptions",
    "Identity",
    "Rule",
    "SeatOptions",
    "lease_identity",
    "parse_options",
    "reservation_fill",
]
