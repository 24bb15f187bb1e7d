"""Signed envelopes: what verifies, and every way a message is refused."""

from __future__ import annotations

import base64
import json

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from floatkey.envelope import EnvelopeError, Signer, _Envelope, open_envelope
from floatkey.signing import b64url_encode, key_id

KEY = Ed25519PrivateKey.generate()
SIGNER = Signer(KEY)
TRUSTED = {key_id(KEY.public_key()): KEY.public_key()}
TOPIC = "floatkey/srv1/state"


def test_a_sealed_body_opens_on_its_topic():
    envelope = SIGNER.seal(TOPIC, b'{"type":"state"}')
    assert open_envelope(envelope, TOPIC, TRUSTED) == b'{"type":"state"}'
    fields = json.loads(envelope)
    assert fields["v"] == 1
    assert fields["kid"] == key_id(KEY.public_key())
    assert len(fields["kid"]) == 16


def refused(payload: bytes, topic: str = TOPIC) -> str:
    with pytest.raises(EnvelopeError) as caught:
        open_envelope(payload, topic, TRUSTED)
    return caught.value.reason


def test_the_topic_is_inside_the_signature():
    envelope = SIGNER.seal(TOPIC, b"{}")
    assert refused(envelope, "floatkey/srv1/events") == "bad_signature"
    assert refused(envelope, "floatkey/srv2/state") == "bad_signature"


def test_unknown_keys_versions_and_shapes_are_refused():
    other = Signer(Ed25519PrivateKey.generate()).seal(TOPIC, b"{}")
    assert refused(other) == "unknown_key"
    fields = json.loads(SIGNER.seal(TOPIC, b"{}"))
    assert refused(json.dumps({**fields, "v": 2}).encode()) == "unknown_version"
    assert refused(json.dumps({**fields, "extra": 1}).encode()) == "not_envelope"
    assert refused(json.dumps({**fields, "sig": "!!"}).encode()) == "not_envelope"
    assert refused(json.dumps({**fields, "sig": "AAAA"}).encode()) == "bad_signature"
    assert refused(b"not json") == "not_envelope"
    assert refused(b"[]") == "not_envelope"


def test_a_changed_body_fails():
    fields = json.loads(SIGNER.seal(TOPIC, b'{"seats":10}'))
    body = base64.urlsafe_b64encode(b'{"seats":99}').rstrip(b"=").decode()
    assert refused(json.dumps({**fields, "body": body}).encode()) == "bad_signature"


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_random_bytes_never_open(data):
    with pytest.raises(EnvelopeError):
        open_envelope(data, TOPIC, TRUSTED)


@settings(max_examples=300)
@given(position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_no_single_byte_change_of_a_genuine_envelope_opens_to_another_body(position, value):
    body = b'{"type":"state","revision":1}'
    envelope = bytearray(SIGNER.seal(TOPIC, body))
    position %= len(envelope)
    envelope[position] = value
    try:
        opened = open_envelope(bytes(envelope), TOPIC, TRUSTED)
    except EnvelopeError:
        return
    assert opened == body  # only a change that JSON or base64 ignores may still open


@settings(max_examples=200)
@given(body=st.binary(max_size=600), topic=st.text(min_size=1, max_size=80))
def test_a_sealed_envelope_is_byte_identical_to_the_encoded_struct(body, topic):
    # seal() writes the JSON directly (issue 17); agents in the field see the same bytes.
    envelope = SIGNER.seal(topic, body)
    fields = json.loads(envelope)
    expected = msgspec.json.encode(
        _Envelope(
            v=1,
            kid=SIGNER.kid,
            body=b64url_encode(body),
            sig=b64url_encode(KEY.sign(b"floatkey/v1\n" + topic.encode() + b"\n" + body)),
        )
    )
    assert envelope == expected
    assert base64.urlsafe_b64decode(fields["body"] + "=" * (-len(fields["body"]) % 4)) == body
    assert open_envelope(envelope, topic, TRUSTED) == body
