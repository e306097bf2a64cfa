"""The price file parser and the priced lines of a statement: exact, half-even, summed."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.errors import ConfigError
from meterbox.vendorkit.billing import (
    LicenseTerms,
    MeterTerms,
    Period,
    SeatEventIn,
    build_statement,
)
from meterbox.vendorkit.prices import (
    MS_PER_HOUR,
    PRICE_DIGITS,
    PriceList,
    Prices,
    format_price,
    parse_prices,
    round_half_even,
)

JAN = Period(2026, 1)
T = JAN.start_ms
HEADER = 'format = "meterbox-prices/1"\ncurrency = "EUR"\n'


def _parse(text: str) -> PriceList:
    return parse_prices(text.encode())


def test_a_full_price_file_parses_to_exact_scaled_prices() -> None:
    prices = _parse(
        HEADER
        + "[default.meters]\nsolver = 0.05\nviews = 0\n"
        + "[default.seat_hours]\ncad = 1.2\n"
        + '[products."Solver Pro".meters]\nsolver = 0.04\n'
        + "[licenses.lic_a.seat_hours]\ncad = 0.000000001\n"
    )
    assert (prices.currency, prices.minor_units) == ("EUR", 2)
    assert prices.default.meters == {"solver": 50_000_000, "views": 0}
    assert prices.lookup("meter", "solver", "lic_x", "Solver Pro") == 40_000_000
    assert prices.lookup("meter", "solver", "lic_x", "Other") == 50_000_000
    assert prices.lookup("seat_hours", "cad", "lic_a", "Solver Pro") == 1
    assert prices.lookup("seat_hours", "cad", "lic_b", "") == 1_200_000_000
    assert prices.lookup("meter", "nothing", "lic_a", "") is None
    assert format_price(50_000_000) == "0.05"
    assert format_price(12 * 10**PRICE_DIGITS) == "12"


def test_minor_units_come_from_the_currency_or_the_file() -> None:
    assert _parse('format = "meterbox-prices/1"\ncurrency = "JPY"\n').minor_units == 0
    text = 'format = "meterbox-prices/1"\ncurrency = "XAU"\nminor_units = 4\n'
    assert _parse(text).minor_units == 4
    with pytest.raises(ConfigError, match="minor units of XAU are not known"):
        _parse('format = "meterbox-prices/1"\ncurrency = "XAU"\n')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "names no known format"),
        ('format = "meterbox-prices/2"\ncurrency = "EUR"\n', "names no known format"),
        ('format = "meterbox-prices/1"\n', "no usable currency"),
        ('format = "meterbox-prices/1"\ncurrency = "eur"\n', "no usable currency"),
        (HEADER + "minor_units = 7\n", "minor_units is not usable"),
        (HEADER + "minor_units = true\n", "minor_units is not usable"),
        (HEADER + "curency = 1\n", "unknown key 'curency'"),
        (HEADER + "[default.meter]\nsolver = 1\n", "unknown key 'meter' in default"),
        (HEADER + '[default.meters]\nsolver = "0.05"\n', "is not a number"),
        (HEADER + "[default.meters]\nsolver = true\n", "is not a number"),
        (HEADER + "[default.meters]\nsolver = -1\n", "out of range"),
        (HEADER + "[default.meters]\nsolver = nan\n", "out of range"),
        (HEADER + "[default.meters]\nsolver = inf\n", "out of range"),
        (HEADER + "[default.meters]\nsolver = 1e10\n", "out of range"),
        (HEADER + "[default.meters]\nsolver = 0.0000000001\n", "too many decimals"),
        # 29 significant digits: Decimal arithmetic at 28 digits would round it to 1.
        (HEADER + "[default.meters]\nsolver = 1.0000000000000000000000000001\n", "decimals"),
        (HEADER + "[default.meters]\nsolver = 1." + "1" * 60 + "\n", "too many digits"),
        (HEADER + "default = 3\n", "default is not a table"),
        (HEADER + "[licenses]\nlic_a = 1\n", "licenses.lic_a is not a table"),
        (HEADER + "[default\n", "not valid TOML"),
    ],
)
def test_bad_price_files_are_refused_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _parse(text)
    # Every refusal says what was expected and what was found.
    assert info.value.expected and info.value.found


def test_non_utf8_and_oversized_files_are_refused() -> None:
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_prices(b"\xff\xfe")
    with pytest.raises(ConfigError, match="too large"):
        parse_prices(b"#" * ((1 << 20) + 1))


_names = st.text(st.characters(codec="utf-8", categories=["L", "N"]), min_size=1, max_size=12)
_decimals = st.decimals(
    min_value=0, max_value=10**6, places=PRICE_DIGITS, allow_nan=False, allow_infinity=False
)


def _toml_key(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@settings(max_examples=200, deadline=None)
@given(
    meters=st.dictionaries(_names, _decimals, max_size=5),
    seats=st.dictionaries(_names, _decimals, max_size=5),
    license_id=_names,
)
def test_generated_price_files_round_trip_exactly(
    meters: dict[str, Decimal], seats: dict[str, Decimal], license_id: str
) -> None:
    lines = [HEADER, f"[licenses.{_toml_key(license_id)}.meters]"]
    lines += [f"{_toml_key(k)} = {v}" for k, v in meters.items()]
    lines += [f"[licenses.{_toml_key(license_id)}.seat_hours]"]
    lines += [f"{_toml_key(k)} = {v}" for k, v in seats.items()]
    prices = _parse("\n".join(lines) + "\n")
    scope = prices.licenses[license_id]
    assert scope.meters == {k: int(v.scaleb(PRICE_DIGITS)) for k, v in meters.items()}
    assert scope.seat_hours == {k: int(v.scaleb(PRICE_DIGITS)) for k, v in seats.items()}
    for k, v in meters.items():
        assert Decimal(format_price(scope.meters[k])) == v


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: (HEADER + t).encode()))
def test_any_bytes_either_parse_or_raise_config_error(data: bytes) -> None:
    error: ConfigError | None = None
    try:
        parse_prices(data)
    except ConfigError as exc:
        error = exc
    if error is not None:
        assert error.expected is not None
        assert error.found is not None


@given(st.integers(-(10**30), 10**30), st.integers(1, 10**20))
def test_half_even_rounding_matches_the_exact_rational(num: int, den: int) -> None:
    # Python's round() of a Fraction rounds halves to even: the reference.
    assert round_half_even(num, den) == round(Fraction(num, den))


def test_halves_round_to_even_per_line() -> None:
    assert [round_half_even(n, 2) for n in (1, 3, 5, -1, -3)] == [0, 2, 2, 0, -2]


# ---------------------------------------------------------------- statements
def _seat_events(lic: str, spans: list[tuple[int, int]]) -> list[SeatEventIn]:
    events: list[SeatEventIn] = []
    seq = 0
    for n, (start, length) in enumerate(spans):
        lease = f"{lic}-L{n}"
        events.append(SeatEventIn("inst", seq, lic, "cad", T + start, "checkout", lease))
        events.append(
            SeatEventIn("inst", seq + 1, lic, "cad", T + start + length, "release", lease)
        )
        seq += 2
    return events


def test_charges_in_a_statement_follow_the_documented_rules() -> None:
    terms = [
        LicenseTerms("lic_a", "ACME", {"runs": MeterTerms(10, "month")}, "Solver"),
        LicenseTerms("lic_b", "ACME", {"views": MeterTerms(None, "total")}, "Viewer"),
    ]
    prices = _parse(
        HEADER
        + "[default.meters]\nruns = 0.125\nviews = 0.001\n"
        + "[default.seat_hours]\ncad = 2.50\n"
        + "[products.Viewer.meters]\nviews = 0.005\n"
    )
    st_ = build_statement(
        JAN,
        terms,
        {("lic_a", "runs"): 14, ("lic_b", "views"): 101},
        {},
        [],
        _seat_events("lic_a", [(0, MS_PER_HOUR * 3 // 2)]),
        prices=prices,
    )
    assert st_.charges is not None
    lines = {(x.license_id, x.item): x for x in st_.charges.lines}
    # Limited meter: the 4 units of overage, 4 * 0.125 EUR = 50 cents.
    assert (lines["lic_a", "runs"].quantity, lines["lic_a", "runs"].amount_minor) == (4, 50)
    # Unlimited meter: every unit; the product price wins over the default.
    views = lines["lic_b", "views"]
    assert (views.quantity, views.unit_price, views.amount_minor) == (101, "0.005", 50)  # 50.5
    # 1.5 seat-hours * 2.50 EUR = 375 cents.
    assert lines["lic_a", "cad"].amount_minor == 375
    assert st_.charges.total_minor == 475
    data = st_.to_json()
    assert data["format"] == "meterbox-bill/3"
    assert data["charges"]["totals"] == [{"customer": "ACME", "amount_minor": 475}]


def test_items_without_a_price_are_listed_not_charged() -> None:
    terms = [LicenseTerms("lic_a", "ACME", {"runs": MeterTerms(None, "month")})]
    st_ = build_statement(JAN, terms, {("lic_a", "runs"): 3}, {}, [], [], prices=_parse(HEADER))
    assert st_.charges is not None
    assert st_.charges.lines == ()
    assert [(u.item, u.quantity) for u in st_.charges.unpriced] == [("runs", 3)]


_price_values = st.integers(0, 10**PRICE_DIGITS * 1000)


@settings(max_examples=150, deadline=None)
@given(
    usage=st.lists(st.tuples(st.sampled_from("abc"), st.integers(-50, 10**7)), max_size=8),
    spans=st.lists(
        st.tuples(st.integers(0, 20 * 24 * MS_PER_HOUR), st.integers(0, 40 * MS_PER_HOUR)),
        max_size=8,
    ),
    meter_price=_price_values,
    seat_price=_price_values,
    minor=st.integers(0, 4),
    limit=st.none() | st.integers(0, 10**6),
)
def test_every_amount_is_the_rounded_exact_product_and_totals_sum_the_lines(
    usage: list[tuple[str, int]],
    spans: list[tuple[int, int]],
    meter_price: int,
    seat_price: int,
    minor: int,
    limit: int | None,
) -> None:
    used: dict[tuple[str, str], int] = {}
    for cust, n in usage:
        key = (f"lic_{cust}", "runs")
        used[key] = used.get(key, 0) + n
    terms = [
        LicenseTerms(f"lic_{c}", f"cust-{c}", {"runs": MeterTerms(limit, "month")}, "P")
        for c in "abc"
    ]
    events = _seat_events("lic_a", spans) + _seat_events("lic_b", spans[:2])
    prices = PriceList("EUR", minor, Prices({"runs": meter_price}, {"cad": seat_price}), {}, {})
    st_ = build_statement(JAN, terms, used, {}, [], events, prices=prices)
    assert st_.charges is not None
    scale = Fraction(10**minor, 10**PRICE_DIGITS)
    for line in st_.charges.lines:
        if line.kind == "meter":
            meter = next(m for m in st_.meters if m.license_id == line.license_id)
            expect_qty = meter.used if limit is None else meter.overage
            exact = expect_qty * meter_price * scale
        else:
            seat = next(s for s in st_.seat_lines if s.license_id == line.license_id)
            expect_qty = seat.seat_ms
            exact = Fraction(seat.seat_ms, MS_PER_HOUR) * seat_price * scale
        assert line.quantity == expect_qty
        assert line.amount_minor == round(exact)
    totals = st_.charges.totals()
    assert sum(totals.values()) == st_.charges.total_minor
    for customer, total in totals.items():
        assert total == sum(x.amount_minor for x in st_.charges.lines if x.customer == customer)
    assert st_.to_json()["charges"]["total_minor"] == sum(x.amount_minor for x in st_.charges.lines)
