"""Unit prices for billing statements: the price file and the charge lines it yields.

The price file (``meterbox-prices/1``, docs/spec/bill.md) is TOML: a currency, its
number of minor-unit digits, and unit prices per meter unit and per seat-hour, as
defaults and per product and per license. :func:`parse_prices` turns its bytes into a
:class:`PriceList` or raises :class:`~meterbox.errors.ConfigError` naming the key;
:func:`charge` prices a :class:`~meterbox.vendorkit.billing.Statement` (pure).

Invariants:

* prices are exact decimals (TOML numbers read as :class:`decimal.Decimal`, never as
  binary floats) held as integers scaled by ``10**PRICE_DIGITS``;
* every amount is an integer of minor units (cents for EUR), rounded once, half to
  even, per line; a total is the sum of its lines, never rounded again;
* a price is looked up license first, then product, then default; an item with a
  quantity but no price is listed as unpriced, never charged as zero silently.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from meterbox.errors import ConfigError

if TYPE_CHECKING:
    from meterbox.vendorkit.billing import Statement

FORMAT: Final = "meterbox-prices/1"
#: Digits after the decimal point a unit price may have (0.000000001 EUR per unit).
PRICE_DIGITS: Final = 9
#: Largest unit price, in major units: a bound so that no product can grow unboundedly.
MAX_PRICE: Final = 10**9
#: Largest price file read, in bytes.
MAX_FILE_BYTES: Final = 1 << 20
MS_PER_HOUR: Final = 3_600_000
_SCALE: Final = 10**PRICE_DIGITS
#: ISO 4217 minor-unit digits of common currencies; any other needs ``minor_units``.
KNOWN_MINOR_UNITS: Final = {
    "AUD": 2, "CAD": 2, "CHF": 2, "CNY": 2, "DKK": 2, "EUR": 2, "GBP": 2, "INR": 2,
    "JPY": 0, "KRW": 0, "NOK": 2, "SEK": 2, "SGD": 2, "USD": 2, "BHD": 3, "KWD": 3,
}  # fmt: skip
_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")
_NAME_MAX: Final = 200
_MAX_DIGITS: Final = 40
_TOP_KEYS: Final = ("format", "currency", "minor_units", "default", "products", "licenses")
_SECTION_KEYS: Final = ("meters", "seat_hours")
EXAMPLE_HINT: Final = (
    'see docs/spec/bill.md; for example: format = "meterbox-prices/1", currency = "EUR", '
    "[default.meters] solver = 0.05"
)


def _error(problem: str, *, expected: str, found: str, hint: str = EXAMPLE_HINT) -> ConfigError:
    return ConfigError(problem, expected=expected, found=found, hint=hint)


@dataclass(frozen=True, slots=True)
class Prices:
    """Unit prices of one scope (default, a product or a license), scaled integers."""

    meters: Mapping[str, int]
    seat_hours: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class PriceList:
    """A parsed price file. Prices are integers: major units times ``10**PRICE_DIGITS``."""

    currency: str
    minor_units: int
    default: Prices
    products: Mapping[str, Prices]
    licenses: Mapping[str, Prices]

    def lookup(self, kind: str, item: str, license_id: str, product: str) -> int | None:
        """The scaled price of ``item`` (a meter or a feature): license, product, default."""
        for scope in (self.licenses.get(license_id), self.products.get(product), self.default):
            if scope is None:
                continue
            table = scope.meters if kind == "meter" else scope.seat_hours
            if item in table:
                return table[item]
        return None


def format_price(scaled: int) -> str:
    """A scaled price as the shortest exact decimal text (``50000000`` -> ``"0.05"``)."""
    whole, frac = divmod(scaled, _SCALE)
    text = f"{frac:0{PRICE_DIGITS}d}".rstrip("0")
    return f"{whole}.{text}" if text else str(whole)


# ------------------------------------------------------------------- parsing
def _price(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise _error(
            f"the price at {where} is not a number",
            expected="a TOML number of major currency units, e.g. 0.05 or 12",
            found=f"{type(value).__name__} {value!r}",
        )
    dec = Decimal(value)
    if not dec.is_finite() or dec < 0 or dec > MAX_PRICE:
        raise _error(
            f"the price at {where} is out of range",
            expected=f"a finite number from 0 to {MAX_PRICE}",
            found=str(value),
        )
    # Exact integer arithmetic on the literal's digits: Decimal operations round to
    # the context's precision, which could make an over-precise price look exact.
    _, digits, exponent = dec.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    if len(digits) > _MAX_DIGITS:
        raise _error(
            f"the price at {where} has too many digits",
            expected=f"at most {_MAX_DIGITS} significant digits",
            found=f"{len(digits)} digits",
        )
    coefficient = int("".join(map(str, digits)) or "0")
    while exponent < -PRICE_DIGITS and coefficient and coefficient % 10 == 0:
        coefficient //= 10
        exponent += 1
    if exponent < -PRICE_DIGITS and coefficient:
        raise _error(
            f"the price at {where} has too many decimals",
            expected=f"at most {PRICE_DIGITS} digits after the decimal point",
            found=str(value),
            hint="round the unit price; amounts are rounded per line (half to even)",
        )
    if exponent < -PRICE_DIGITS:
        return 0
    return coefficient * int(10 ** (exponent + PRICE_DIGITS))  # exponent >= -PRICE_DIGITS


def _table(value: object, where: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _error(
            f"{where} is not a table",
            expected=f"a TOML table of {what}",
            found=f"{type(value).__name__} {value!r}"[:120],
        )
    for key in value:
        if not 0 < len(key) <= _NAME_MAX:
            raise _error(
                f"a key in {where} is not usable",
                expected=f"a name of 1 to {_NAME_MAX} characters",
                found=f"{len(key)} characters",
            )
    return value


def _prices(value: object, where: str) -> Prices:
    section = _table(value, where, "meters and seat_hours")
    for key in section:
        if key not in _SECTION_KEYS:
            raise _error(
                f"unknown key {key!r} in {where}",
                expected=f"one of {', '.join(_SECTION_KEYS)}",
                found=f"{where}.{key}",
            )
    out: dict[str, dict[str, int]] = {}
    for key in _SECTION_KEYS:
        items = _table(section.get(key, {}), f"{where}.{key}", "names and prices")
        out[key] = {name: _price(v, f"{where}.{key}.{name}") for name, v in items.items()}
    return Prices(out["meters"], out["seat_hours"])


def _scopes(value: object, where: str) -> dict[str, Prices]:
    return {
        name: _prices(v, f"{where}.{name}")
        for name, v in _table(value, where, "names and their prices").items()
    }


def parse_prices(data: bytes, *, source: str = "the price file") -> PriceList:
    """Parse a ``meterbox-prices/1`` file; raise ConfigError naming the bad key."""
    if len(data) > MAX_FILE_BYTES:
        raise _error(
            f"{source} is too large",
            expected=f"at most {MAX_FILE_BYTES} bytes",
            found=f"{len(data)} bytes",
        )
    try:
        doc = tomllib.loads(data.decode("utf-8"), parse_float=Decimal)
    except UnicodeDecodeError as exc:
        raise _error(
            f"{source} is not UTF-8 text", expected="a UTF-8 TOML file", found=str(exc)
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise _error(
            f"{source} is not valid TOML",
            expected='lines like currency = "EUR"',
            found=str(exc),
            hint="fix the line named above",
        ) from None
    for key in doc:
        if key not in _TOP_KEYS:
            raise _error(
                f"unknown key {key!r} in {source}",
                expected=f"one of {', '.join(_TOP_KEYS)}",
                found=repr(key),
            )
    if doc.get("format") != FORMAT:
        raise _error(
            f"{source} names no known format",
            expected=f'format = "{FORMAT}"',
            found=repr(doc.get("format", "no format key"))[:120],
        )
    currency = doc.get("currency")
    if not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency):
        raise _error(
            f"{source} names no usable currency",
            expected='an ISO 4217 code of three capital letters, e.g. currency = "EUR"',
            found=repr(currency)[:120],
        )
    minor = doc.get("minor_units", KNOWN_MINOR_UNITS.get(currency))
    if minor is None:
        raise _error(
            f"the minor units of {currency} are not known",
            expected="minor_units = N (the digits after the decimal point, 0 to 4)",
            found="no minor_units key",
            hint=f"add minor_units for {currency}, e.g. minor_units = 2",
        )
    if isinstance(minor, bool) or not isinstance(minor, int) or not 0 <= minor <= 4:
        raise _error(
            "minor_units is not usable",
            expected="an integer from 0 to 4",
            found=repr(minor)[:120],
        )
    return PriceList(
        currency,
        minor,
        _prices(doc.get("default", {}), "default"),
        _scopes(doc.get("products", {}), "products"),
        _scopes(doc.get("licenses", {}), "licenses"),
    )


# ------------------------------------------------------------------- pricing
def round_half_even(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded to an integer, halves to the even neighbour."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    q, r = divmod(numerator, denominator)  # floor division: 0 <= r < denominator
    twice = 2 * r
    if twice > denominator or (twice == denominator and q % 2 == 1):
        q += 1
    return q


@dataclass(frozen=True, slots=True)
class ChargeLine:
    """One priced item: a meter's billed units or a feature's seat time."""

    customer: str
    license_id: str
    product: str
    kind: str  # "meter" or "seat_hours"
    item: str
    #: Billed units (meters) or seat milliseconds (seats): exact integers.
    quantity: int
    unit: str  # "unit" or "ms"
    unit_price: str  # exact decimal text, major units per unit or per seat-hour
    amount_minor: int


@dataclass(frozen=True, slots=True)
class Unpriced:
    """An item with a quantity to bill and no price in the file."""

    customer: str
    license_id: str
    kind: str
    item: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Charges:
    currency: str
    minor_units: int
    lines: tuple[ChargeLine, ...]
    unpriced: tuple[Unpriced, ...]

    @property
    def total_minor(self) -> int:
        return sum(x.amount_minor for x in self.lines)

    def totals(self) -> dict[str, int]:
        """Per customer, the sum of its lines' amounts."""
        out: dict[str, int] = {}
        for x in self.lines:
            out[x.customer] = out.get(x.customer, 0) + x.amount_minor
        return out


def billed_units(used: int, prepaid: int | None, overage: int) -> int:
    """The units of a meter line that are charged: its overage, or all used if unlimited.

    A meter with a limit was sold with its prepaid units, so only the overage is
    charged; an unlimited meter is pure pay-per-use, so every net unit of the period is
    (a period whose decrements exceed its increments is a credit, a negative quantity).
    """
    return used if prepaid is None else overage


def charge(statement: Statement, prices: PriceList, products: Mapping[str, str]) -> Charges:
    """Price every meter line and seat line of ``statement`` (pure).

    ``products`` maps each license id to its product name, for product prices.
    """
    factor = 10**prices.minor_units
    lines: list[ChargeLine] = []
    unpriced: list[Unpriced] = []
    for m in statement.meters:
        qty = billed_units(m.used, m.prepaid, m.overage)
        product = products.get(m.license_id, "")
        price = prices.lookup("meter", m.meter, m.license_id, product)
        if price is None:
            if qty:
                unpriced.append(Unpriced(m.customer, m.license_id, "meter", m.meter, qty))
            continue
        amount = round_half_even(qty * price * factor, _SCALE)
        lines.append(
            ChargeLine(
                m.customer, m.license_id, product, "meter", m.meter, qty, "unit",
                format_price(price), amount,
            )
        )  # fmt: skip
    for s in statement.seat_lines:
        product = products.get(s.license_id, "")
        price = prices.lookup("seat_hours", s.feature, s.license_id, product)
        if price is None:
            if s.seat_ms:
                unpriced.append(
                    Unpriced(s.customer, s.license_id, "seat_hours", s.feature, s.seat_ms)
                )
            continue
        amount = round_half_even(s.seat_ms * price * factor, _SCALE * MS_PER_HOUR)
        lines.append(
            ChargeLine(
                s.customer, s.license_id, product, "seat_hours", s.feature, s.seat_ms, "ms",
                format_price(price), amount,
            )
        )  # fmt: skip
    return Charges(prices.currency, prices.minor_units, tuple(lines), tuple(unpriced))
