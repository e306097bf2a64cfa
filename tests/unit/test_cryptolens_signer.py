"""RSA key handling for Cryptolens responses: files, PEM, .NET XML, strict parsing."""

from __future__ import annotations

import base64
import contextlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from licensing.internal import HelperMethods
from licensing.models import RSAPublicKey

from meterbox.compat import CryptolensSigner, public_key_from_xml, public_key_to_xml
from meterbox.errors import ConfigError, FormatError

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SIGNER = CryptolensSigner(KEY)


def test_generated_key_file_is_private_pem_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "cryptolens.pem"
    signer = CryptolensSigner.generate(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert CryptolensSigner.load(path).public_key_xml() == signer.public_key_xml()


def test_generate_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_text("keep me")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        CryptolensSigner.generate(path)
    assert path.read_text() == "keep me"


def test_private_xml_round_trips_and_loads_from_a_file(tmp_path: Path) -> None:
    xml = SIGNER.private_key_xml()
    for tag in ("Modulus", "Exponent", "P", "Q", "DP", "DQ", "InverseQ", "D"):
        assert f"<{tag}>" in xml
    again = CryptolensSigner.from_xml(xml)
    assert again.private_key_pem() == SIGNER.private_key_pem()
    path = tmp_path / "key.xml"
    path.write_text("\n  " + xml.replace("><", ">\n  <") + "\n")
    assert CryptolensSigner.load(path).public_key_xml() == SIGNER.public_key_xml()


def test_public_xml_has_the_embedded_form_and_the_sdk_verifies_with_it() -> None:
    xml = SIGNER.public_key_xml()
    assert xml.startswith("<RSAKeyValue><Modulus>")
    assert xml.endswith("</Modulus><Exponent>AQAB</Exponent></RSAKeyValue>")
    assert public_key_from_xml(xml).public_numbers() == KEY.public_key().public_numbers()
    message = b'{"ProductId":1}'
    parsed = RSAPublicKey.from_string(xml)
    pair = (
        HelperMethods.OS2IP(base64.b64decode(parsed.modulus)),
        HelperMethods.OS2IP(base64.b64decode(parsed.exponent)),
    )
    assert HelperMethods.RSAASSA_PKCS1_V15_VERIFY(pair, message, SIGNER.sign_license(message))
    assert HelperMethods.RSAASSA_PKCS1_V15_VERIFY(
        pair, message, SIGNER.sign_metadata(message), l=512
    )
    assert not HelperMethods.RSAASSA_PKCS1_V15_VERIFY(
        pair, message + b" ", SIGNER.sign_license(message)
    )


@pytest.mark.parametrize(
    "text",
    [
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x "AQAB">]><RSAKeyValue><Modulus>AQAB</Modulus>'
        "<Exponent>&x;</Exponent></RSAKeyValue>",
        '<RSAKeyValue xmlns="urn:x"><Modulus>AQAB</Modulus><Exponent>AQAB</Exponent></RSAKeyValue>',
        "<RSAKeyValue><Modulus>AQAB</Modulus><!-- c --><Exponent>AQAB</Exponent></RSAKeyValue>",
        "<RSAKeyValue><Modulus>AQAB</Modulus><Modulus>AQAB</Modulus></RSAKeyValue>",
        "<RSAKeyValue><Modulus>A!AB</Modulus><Exponent>AQAB</Exponent></RSAKeyValue>",
        "<RSAKeyValue><Exponent>AQAB</Exponent></RSAKeyValue>",
        "<RSAKeyValue><Modulus>AQAB</Modulus><Exponent>AQAB</Exponent></RSAKeyValue>",
        "<RSAKeyValue><Modulus></Modulus><Exponent>AQAB</Exponent></RSAKeyValue>",
        "<RSAKeyValue><Foo>AQAB</Foo></RSAKeyValue>",
        "<RSAKeyValue>" + "<Modulus>" + "A" * 20_000 + "</Modulus></RSAKeyValue>",
    ],
)
def test_unsafe_or_malformed_xml_is_refused(text: str) -> None:
    with pytest.raises(FormatError):
        public_key_from_xml(text)


def test_partial_private_parts_and_inconsistent_numbers_are_refused() -> None:
    xml = SIGNER.private_key_xml()
    start, end = xml.index("<DP>"), xml.index("</DP>") + len("</DP>")
    with pytest.raises(FormatError, match="only some private parts"):
        CryptolensSigner.from_xml(xml[:start] + xml[end:])
    other = CryptolensSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    other_d = other.private_key_xml().split("<D>")[1].split("</D>")[0]
    mine_d = xml.split("<D>")[1].split("</D>")[0]
    with pytest.raises(FormatError, match="inconsistent"):
        CryptolensSigner.from_xml(xml.replace(mine_d, other_d))
    with pytest.raises(FormatError, match="only a public key"):
        CryptolensSigner.from_xml(SIGNER.public_key_xml())


def test_keys_other_than_2048_bits_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(FormatError, match="2048-bit"):
        CryptolensSigner(small)
    with pytest.raises(FormatError, match="2048-bit"):
        public_key_from_xml(public_key_to_xml(small.public_key()))


def test_non_pem_and_non_rsa_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FormatError):
        CryptolensSigner.from_pem(b"not a key")
    with pytest.raises(ConfigError):
        CryptolensSigner.load(tmp_path / "missing.pem")


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=300) | st.builds(lambda s: "<RSAKeyValue>" + s + "</RSAKeyValue>", st.text())
)
def test_arbitrary_text_either_parses_or_raises_format_error(text: str) -> None:
    with contextlib.suppress(FormatError):
        public_key_from_xml(text)
