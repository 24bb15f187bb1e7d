"""The product key codec: round trips, every refusal, and the text form's forgiveness."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from floatkey import _keytext, productkey
from floatkey.errors import (
    KeyExpired,
    KeyMalformed,
    KeyMistyped,
    KeyNotIssuedByVendor,
    LicenseeMismatch,
    ProductKeyError,
    SeatsOutOfRange,
    UnknownKeyFormat,
    WrongProductVersion,
)
from floatkey.productkey import ProductKey, issue_product_key, parse_product_key, verify_product_key
from floatkey.signing import load_private_key
from licensing import CONFIG, FORMAT_1_KEY, FORMAT_2_KEY

VENDOR = Ed25519PrivateKey.generate()
OTHER_VENDOR = Ed25519PrivateKey.generate()
NAME, ORG = "Ada Lovelace", "Analytical Engines Ltd"
TODAY = dt.date(2026, 11, 28)


def issue(**overrides: object) -> str:
    fields: dict[str, object] = {
        "name": NAME,
        "organization": ORG,
        "seats": 10,
        "features": ["dataflow", "workflow", "subflow"],
        "issued": TODAY,
    }
    fields.update(overrides)
    return issue_product_key(VENDOR, **fields)  # type: ignore[arg-type]


def verify(text: str, **overrides: object) -> ProductKey:
    fields: dict[str, object] = {"name": NAME, "organization": ORG, "today": TODAY}
    fields.update(overrides)
    return verify_product_key(text, VENDOR.public_key(), **fields)  # type: ignore[arg-type]


feature_names = st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True)
licensee_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
    min_size=1,
    max_size=60,
).filter(lambda s: productkey.normalize_licensee(s) != "")


# --- round trips ---------------------------------------------------------------------


@settings(max_examples=200)
@given(
    name=licensee_text,
    org=licensee_text,
    seats=st.integers(1, 100_000),
    features=st.lists(feature_names, max_size=12, unique=True),
    version=st.integers(1, 99),
    issued=st.dates(dt.date(2020, 1, 1), dt.date(2100, 1, 1)),
    valid_days=st.none() | st.integers(1, 3650),
)
def test_every_issued_key_round_trips(name, org, seats, features, version, issued, valid_days):
    expires = None if valid_days is None else issued + dt.timedelta(days=valid_days)
    text = issue_product_key(
        VENDOR,
        name=name,
        organization=org,
        seats=seats,
        features=features,
        product_version=version,
        issued=issued,
        expires=expires,
    )
    key = verify_product_key(
        text,
        VENDOR.public_key(),
        name=name,
        organization=org,
        product_version=version,
        today=issued,
    )
    assert key.seats == seats
    assert key.features == tuple(sorted(features))
    assert key.product_version == version
    assert key.issued == issued
    assert key.expires == expires
    assert parse_product_key(text).text == text


def test_a_key_with_five_features_fits_in_250_characters():
    text = issue(features=["dataflow", "workflow", "subflow", "reporting", "scheduler"])
    assert len(text) <= 250
    assert text.startswith("FK-")
    assert all(len(group) <= 6 for group in text.split("-"))


def test_the_text_form_has_no_ambiguous_characters():
    for _ in range(20):
        body = issue().removeprefix("FK-").replace("-", "")
        assert not set(body) & set("ILOU")


def test_pasted_keys_are_accepted_with_spaces_line_breaks_and_lower_case():
    text = issue()
    groups = text.split("-")
    mangled = "  " + "-".join(groups[:5]).lower() + "\n" + " - ".join(groups[5:]) + "\r\n"
    assert verify(mangled).seats == 10


def test_crockford_look_alikes_read_as_digits():
    text = issue()
    prefix, body = text[:3], text[3:]
    swapped = prefix + body.replace("0", "O").replace("1", "l")
    assert verify(swapped) == verify(text)


# --- the checksum tells typing errors from forgeries ----------------------------------


def _equivalent(a: str, b: str) -> bool:
    """Whether two characters read the same (case, and Crockford's look-alikes)."""
    return a.upper().translate(str.maketrans("OIL", "011")) == b.upper().translate(
        str.maketrans("OIL", "011"),
    )


@settings(max_examples=500)
@given(data=st.data())
def test_changing_any_one_character_is_mistyped_or_malformed_never_valid(data):
    text = issue()
    position = data.draw(st.integers(0, len(text) - 1))
    replacement = data.draw(st.sampled_from(_keytext.ALPHABET + "-ILOUX!a z"))
    assume(not _equivalent(text[position], replacement))
    assume(not (text[position] == "-" and replacement == " "))  # a dash read as a space
    changed = text[:position] + replacement + text[position + 1 :]
    with pytest.raises((KeyMistyped, KeyMalformed)):
        verify(changed)


@settings(max_examples=300)
@given(data=st.data())
def test_swapping_two_neighbouring_characters_is_caught(data):
    text = issue()
    body = text.removeprefix("FK-").replace("-", "")
    i = data.draw(st.integers(0, len(body) - 2))
    assume(body[i] != body[i + 1])
    swapped = body[:i] + body[i + 1] + body[i] + body[i + 2 :]
    with pytest.raises((KeyMistyped, KeyMalformed)):
        verify("FK-" + swapped)


@settings(max_examples=300)
@given(data=st.data())
def test_flipping_any_bit_of_the_signed_bytes_is_not_issued_by_this_vendor(data):
    signed = parse_product_key(issue())
    raw = bytearray(signed.signed_bytes + signed.signature)
    # The first byte is the format version: flipping it is a different refusal, tested below.
    bit = data.draw(st.integers(8, len(raw) * 8 - 1))
    raw[bit // 8] ^= 0x80 >> (bit % 8)
    forged = _keytext.encode(bytes(raw))  # a valid checksum: a forgery, not a typo
    with pytest.raises(KeyNotIssuedByVendor):
        verify(forged)


# --- the licensee binding -------------------------------------------------------------


@given(
    spaces=st.lists(st.sampled_from([" ", "  ", "\t", "\u00a0"]), min_size=4, max_size=4),
    upper=st.booleans(),
)
def test_name_and_organization_accept_case_and_spacing_variations(spaces, upper):
    text = issue()
    name = spaces[0] + "ada" + spaces[1] + "LOVELACE" + spaces[2]
    org = ("ANALYTICAL engines" + spaces[3] + "ltd") if upper else "analytical ENGINES ltd"
    assert verify(text, name=name, organization=org).seats == 10


@given(name=licensee_text, org=licensee_text)
def test_any_other_name_or_organization_is_refused(name, org):
    text = issue()
    assume(
        (productkey.normalize_licensee(name), productkey.normalize_licensee(org))
        != (productkey.normalize_licensee(NAME), productkey.normalize_licensee(ORG)),
    )
    with pytest.raises(LicenseeMismatch):
        verify(text, name=name, organization=org)


@pytest.mark.parametrize(
    ("name", "org", "fields"),
    [
        ("Ada Lovelac", ORG, ("name",)),
        ("Ada  Lovelace", "Analytical Engines", ("organization",)),
        (ORG, NAME, ("name", "organization")),
        ("Ada-Lovelace", ORG, ("name",)),
    ],
)
def test_near_misses_of_the_licensee_are_refused_naming_the_field(name, org, fields):
    with pytest.raises(LicenseeMismatch) as caught:
        verify(issue(), name=name, organization=org)
    assert caught.value.reason == "licensee_mismatch"
    assert caught.value.fields == fields
    assert "case and spacing do not matter" in caught.value.message


@pytest.mark.parametrize(
    ("name", "org", "sentence"),
    [
        (
            "Charles Babbage",
            ORG,
            (
                "This product key was issued to another name: the organization matches, the name "
                "does not. Enter the name exactly as it appears on your license certificate; case "
                "and spacing do not matter."
            ),
        ),
        (
            NAME,
            "Difference Engines Ltd",
            (
                "This product key was issued to another organization: the name matches, the "
                "organization does not. Enter the organization exactly as it appears on your "
                "license certificate; case and spacing do not matter."
            ),
        ),
        (
            "Charles Babbage",
            "Difference Engines Ltd",
            (
                "This product key was issued to another licensee: neither the name nor the "
                "organization matches. Enter both exactly as they appear on your license "
                "certificate; case and spacing do not matter."
            ),
        ),
    ],
)
def test_the_mismatch_sentence_says_which_field_does_not_match(name, org, sentence):
    with pytest.raises(LicenseeMismatch) as caught:
        verify(issue(), name=name, organization=org)
    assert caught.value.message == sentence


@given(name=licensee_text, org=licensee_text)
def test_the_fields_named_are_exactly_those_that_differ(name, org):
    differ = tuple(
        field
        for field, entered, issued in (("name", name, NAME), ("organization", org, ORG))
        if productkey.normalize_licensee(entered) != productkey.normalize_licensee(issued)
    )
    assume(differ)
    with pytest.raises(LicenseeMismatch) as caught:
        verify(issue(), name=name, organization=org)
    assert caught.value.fields == differ


# --- record formats: 2 is issued, 1 is still read ---------------------------------------

DEV_VENDOR = load_private_key(CONFIG / "dev-vendor.key")
GOLDEN = {
    "product_version": 8,
    "serial": "0123456789ab",
    "seats": 10,
    "features": ("dataflow", "subflow", "workflow"),
    "issued": dt.date(2026, 11, 1),
    "expires": None,
}


def test_keys_are_issued_in_format_2_with_a_name_and_an_organization_digest():
    key = parse_product_key(issue()).key
    assert key.format_version == productkey.FORMAT_VERSION == 2
    golden = ProductKey(**GOLDEN, licensee_digest=productkey.licensee_digest(NAME, ORG))
    # Ed25519 is deterministic: the same record is the same key, byte for byte.
    assert productkey.sign_product_key(golden, DEV_VENDOR) == FORMAT_2_KEY
    assert productkey.licensee_digest(NAME, ORG)[:4] == productkey.licensee_digest(NAME, "x")[:4]
    assert productkey.licensee_digest(NAME, ORG)[4:] == productkey.licensee_digest("y", ORG)[4:]


def test_a_format_1_key_issued_by_the_previous_release_is_still_accepted():
    vendor = DEV_VENDOR.public_key()
    key = verify_product_key(
        FORMAT_1_KEY, vendor, name=" ada  LOVELACE", organization="analytical engines ltd"
    )
    assert key == ProductKey(
        **GOLDEN, licensee_digest=productkey.licensee_digest(NAME, ORG, 1), format_version=1
    )
    assert parse_product_key(FORMAT_1_KEY).text == FORMAT_1_KEY
    # The codec still writes format 1 (for tests like this one), and reads it back.
    assert productkey.sign_product_key(key, DEV_VENDOR) == FORMAT_1_KEY


@pytest.mark.parametrize(("name", "org"), [("Charles Babbage", ORG), (NAME, "x"), ("x", "y")])
def test_a_format_1_key_cannot_tell_which_field_does_not_match(name, org):
    with pytest.raises(LicenseeMismatch) as caught:
        verify_product_key(FORMAT_1_KEY, DEV_VENDOR.public_key(), name=name, organization=org)
    assert caught.value.reason == "licensee_mismatch"
    assert caught.value.fields is None
    assert caught.value.message == (
        "This product key was issued to another name or organization: the name or the "
        "organization does not match. Enter the name and organization exactly as they appear "
        "on your license certificate; case and spacing do not matter."
    )


def test_a_format_2_binding_does_not_verify_as_format_1_or_the_other_way():
    v1 = parse_product_key(FORMAT_1_KEY)
    # The same record bytes with the format byte changed: the signature no longer holds.
    raw = bytes([2]) + v1.signed_bytes[1:] + v1.signature
    with pytest.raises(KeyNotIssuedByVendor):
        verify_product_key(
            _keytext.encode(raw), DEV_VENDOR.public_key(), name=NAME, organization=ORG
        )
    assert productkey.licensee_digest(NAME, ORG, 1) != productkey.licensee_digest(NAME, ORG, 2)


# --- one test per refusal: reason code and sentence ------------------------------------


def assert_refused(
    exc_type: type[ProductKeyError], reason: str, words: str, text: str, **kw: object
):
    with pytest.raises(exc_type) as caught:
        verify(text, **kw)
    assert caught.value.reason == reason
    assert words in caught.value.message
    assert str(caught.value) == caught.value.message
    return caught.value


def test_refuses_a_wrong_prefix():
    assert_refused(KeyMalformed, "malformed", "starts with FK-", "XK" + issue()[2:])


def test_refuses_characters_that_never_appear_in_a_key():
    text = issue()
    assert_refused(KeyMalformed, "malformed", "'U'", text[:10] + "U" + text[11:])


def test_refuses_a_truncated_key():
    assert_refused(KeyMalformed, "malformed", "too short", issue()[:60])


def test_refuses_absurdly_long_input_without_reading_it():
    assert_refused(KeyMalformed, "malformed", "far too long", "FK-" + "A" * 5000)


def test_refuses_a_mistyped_key():
    text = issue()
    i = text.index("-", 10) + 1
    typo = "A" if text[i] != "A" else "B"
    assert_refused(KeyMistyped, "mistyped", "typing error", text[:i] + typo + text[i + 1 :])


def test_refuses_a_key_from_another_vendor():
    forged = issue_product_key(
        OTHER_VENDOR,
        name=NAME,
        organization=ORG,
        seats=10,
        features=["dataflow"],
        issued=TODAY,
    )
    assert_refused(KeyNotIssuedByVendor, "bad_signature", "not issued", forged)


@pytest.mark.parametrize("version", [6, 7])
def test_refuses_keys_from_versions_6_and_7_with_the_contact_sales_message(version):
    err = assert_refused(
        WrongProductVersion,
        "wrong_product_version",
        "contact sales",
        issue(product_version=version),
    )
    assert f"for version {version}" in err.message
    assert "Keys from versions 6 and 7 cannot be used with version 8" in err.message
    assert err.key_version == version


@pytest.mark.parametrize("version", [1, 5, 9, 99])
def test_refuses_keys_for_any_other_version(version):
    err = assert_refused(
        WrongProductVersion,
        "wrong_product_version",
        "runs version 8",
        issue(product_version=version),
    )
    assert "contact sales" not in err.message


def test_refuses_a_mismatched_licensee():
    assert_refused(
        LicenseeMismatch,
        "licensee_mismatch",
        "issued to another name: the organization matches",
        issue(),
        name="Charles Babbage",
    )


def test_refuses_an_expired_key_and_accepts_it_on_its_last_day():
    text = issue(expires=dt.date(2026, 12, 31))
    assert verify(text, today=dt.date(2026, 12, 31)).expires == dt.date(2026, 12, 31)
    assert_refused(KeyExpired, "expired", "expired on 2026-12-31", text, today=dt.date(2027, 1, 1))


@pytest.mark.parametrize("seats", [0, 100_001, 2**24 - 1])
def test_refuses_seats_out_of_range(seats):
    key = ProductKey(
        product_version=8,
        serial="00" * 6,
        licensee_digest=productkey.licensee_digest(NAME, ORG),
        seats=seats,
        features=("dataflow",),
        issued=TODAY,
        expires=None,
    )
    text = productkey.sign_product_key(key, VENDOR)
    assert_refused(SeatsOutOfRange, "seats_out_of_range", f"grants {seats} seats", text)


def test_refuses_an_unknown_format_version():
    signed = parse_product_key(issue())
    raw = bytes([3]) + signed.signed_bytes[1:] + signed.signature
    assert_refused(UnknownKeyFormat, "unknown_format", "format 3", _keytext.encode(raw))


def test_the_checks_run_in_order_signature_before_version_before_licensee():
    old = issue_product_key(
        OTHER_VENDOR,
        name="x",
        organization="y",
        seats=1,
        features=[],
        product_version=7,
        issued=TODAY,
    )
    with pytest.raises(KeyNotIssuedByVendor):
        verify(old)
    with pytest.raises(WrongProductVersion):
        verify(issue(product_version=7), name="someone else")


# --- issuing refuses what it cannot encode ---------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"seats": 0}, "seats"),
        ({"seats": 100_001}, "seats"),
        ({"product_version": 0}, "product version"),
        ({"product_version": 100}, "product version"),
        ({"features": ["Dataflow"]}, "not a feature name"),
        ({"features": ["data flow"]}, "not a feature name"),
        ({"name": "   "}, "name"),
        ({"organization": ""}, "organization"),
        ({"expires": TODAY}, "expiry"),
        ({"issued": dt.date(2019, 12, 31)}, "issue date"),
    ],
)
def test_issuing_refuses_bad_arguments(overrides, words):
    with pytest.raises(ValueError, match=words):
        issue(**overrides)
