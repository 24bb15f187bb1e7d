"""floatkey-vendor as a vendor runs it: exit codes, stdout, file modes."""

from __future__ import annotations

import json
import stat

from conftest import run
from floatkey.productkey import verify_product_key
from floatkey.signing import parse_public_key

ISSUE = (
    "--name",
    "Ada Lovelace",
    "--organization",
    "Analytical Engines Ltd",
    "--seats",
    "10",
    "--features",
    "dataflow,workflow,subflow",
)


def test_keygen_writes_a_private_key_0600_and_prints_the_public_key(tmp_path):
    out = tmp_path / "vendor.key"
    result = run("floatkey-vendor", "keygen", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    public = result.stdout.strip()
    assert public.startswith("ed25519:")
    assert (tmp_path / "vendor.key.pub").read_text().strip() == public
    parse_public_key(public)
    assert "PRIVATE" not in result.stdout + result.stderr


def test_keygen_refuses_to_overwrite(tmp_path):
    out = tmp_path / "vendor.key"
    out.write_text("precious")
    result = run("floatkey-vendor", "keygen", "--out", str(out))
    assert result.returncode == 1
    assert "refusing to overwrite" in result.stderr
    assert out.read_text() == "precious"
    assert not (tmp_path / "vendor.key.pub").exists()


def test_issue_prints_only_the_key_and_it_verifies(dev_vendor_key, dev_vendor_public):
    result = run("floatkey-vendor", "issue", "--vendor-key", str(dev_vendor_key), *ISSUE)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("FK-")
    key = verify_product_key(
        lines[0],
        parse_public_key(dev_vendor_public),
        name="ada lovelace",
        organization="ANALYTICAL ENGINES LTD",
    )
    assert key.seats == 10
    assert key.features == ("dataflow", "subflow", "workflow")


def test_issue_takes_old_product_versions_and_an_expiry(dev_vendor_key):
    result = run(
        "floatkey-vendor",
        "issue",
        "--vendor-key",
        str(dev_vendor_key),
        *ISSUE,
        "--product-version",
        "7",
        "--expires",
        "2030-01-31",
    )
    assert result.returncode == 0, result.stderr
    shown = run("floatkey-vendor", "inspect", result.stdout.strip(), "--json")
    facts = json.loads(shown.stdout)
    assert facts["product_version"] == 7
    assert facts["expires"] == "2030-01-31"
    assert facts["signature_valid"] is None


def test_issue_with_bad_arguments_exits_2_with_a_clear_message(dev_vendor_key):
    cases = [
        (("--seats", "0"), "seats must be between 1 and 100000"),
        (("--seats", "ten"), "invalid int value"),
        (("--features", "Data Flow"), "not a feature name"),
        (("--product-version", "100"), "product version must be between 1 and 99"),
        (("--expires", "31/01/2030"), "not a date in the form YYYY-MM-DD"),
    ]
    for extra, words in cases:
        result = run(
            "floatkey-vendor", "issue", "--vendor-key", str(dev_vendor_key), *ISSUE, *extra
        )
        assert result.returncode == 2, (extra, result.stderr)
        assert words in result.stderr
        assert result.stdout == ""


def test_issue_with_a_missing_vendor_key_says_so(tmp_path):
    result = run("floatkey-vendor", "issue", "--vendor-key", str(tmp_path / "nope.key"), *ISSUE)
    assert result.returncode == 1
    assert "Cannot read the key file" in result.stderr
    assert result.stdout == ""


def test_inspect_shows_the_contents_and_checks_the_signature(
    dev_vendor_key, dev_vendor_public, tmp_path
):
    text = run(
        "floatkey-vendor", "issue", "--vendor-key", str(dev_vendor_key), *ISSUE
    ).stdout.strip()
    shown = run("floatkey-vendor", "inspect", text, "--vendor-public-key", dev_vendor_public)
    assert shown.returncode == 0, shown.stderr
    assert "Seats            10" in shown.stdout
    assert "dataflow, subflow, workflow" in shown.stdout
    assert "Licensee digest" in shown.stdout
    assert "Signature        valid" in shown.stdout

    other = run("floatkey-vendor", "keygen", "--out", str(tmp_path / "other.key")).stdout.strip()
    shown = run("floatkey-vendor", "inspect", text, "--vendor-public-key", other)
    assert shown.returncode == 1
    assert "INVALID" in shown.stdout


def test_inspect_refuses_a_mistyped_key_with_its_reason(dev_vendor_key):
    text = run(
        "floatkey-vendor", "issue", "--vendor-key", str(dev_vendor_key), *ISSUE
    ).stdout.strip()
    typo = text[:-1] + ("A" if text[-1] != "A" else "B")
    shown = run("floatkey-vendor", "inspect", typo)
    assert shown.returncode == 1
    assert "mistyped" in shown.stderr
