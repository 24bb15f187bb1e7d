"""floatkey-vendor as a vendor runs it: exit codes, stdout, file modes, the catalogue."""

from __future__ import annotations

import datetime as dt
import json
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import CONFIG, command, run
from floatkey.productkey import parse_product_key, verify_product_key
from floatkey.signing import parse_public_key
from floatkeyd._vendor import expiry_text
from licensing import FORMAT_1_KEY, FORMAT_2_KEY, NAME, ORG
from servers import required_tool

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
    # A starter catalogue beside the key, with no features until the vendor lists them.
    assert f"Wrote a starter product catalogue to {tmp_path / 'product.toml'}" in result.stderr
    assert "[features]" in (tmp_path / "product.toml").read_text()


def test_keygen_keeps_a_catalogue_that_is_already_there(tmp_path):
    catalogue = tmp_path / "product.toml"
    catalogue.write_text("[product]\nname = 'Mine'\n[features]\nmine = 'Mine'\n")
    result = run("floatkey-vendor", "keygen", "--out", str(tmp_path / "vendor.key"))
    assert result.returncode == 0, result.stderr
    assert f"The product catalogue {catalogue} is already there" in result.stderr
    assert "mine = 'Mine'" in catalogue.read_text()


def test_keygen_then_list_the_features_then_issue(tmp_path):
    vendor_key = tmp_path / "vendor.key"
    assert run("floatkey-vendor", "keygen", "--out", str(vendor_key)).returncode == 0
    args = ("issue", "--vendor-key", str(vendor_key), *ISSUE)

    # The starter catalogue lists no features: issuing says where and what to write.
    refused = run("floatkey-vendor", *args)
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert f"The product catalogue {tmp_path / 'product.toml'}" in refused.stderr
    assert f"looked for beside the vendor key {vendor_key}" in refused.stderr
    assert "lists no features" in refused.stderr
    assert 'id = "Display name"' in refused.stderr

    catalogue = (tmp_path / "product.toml").read_text()
    (tmp_path / "product.toml").write_text(
        catalogue + 'dataflow = "Dataflow"\nworkflow = "Workflow"\nsubflow = "Sub-flows"\n'
    )
    listed = run("floatkey-vendor", "features", "--vendor-key", str(vendor_key))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1:] == [
        "  dataflow  Dataflow",
        "  workflow  Workflow",
        "  subflow   Sub-flows",
    ]
    issued = run("floatkey-vendor", *args)
    assert issued.returncode == 0, issued.stderr
    assert issued.stdout.startswith("FK-")


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
        (("--issued", "2019-12-31"), "--issued 2019-12-31 is outside what a key can carry"),
    ]
    for extra, words in cases:
        result = run(
            "floatkey-vendor", "issue", "--vendor-key", str(dev_vendor_key), *ISSUE, *extra
        )
        assert result.returncode == 2, (extra, result.stderr)
        assert words in result.stderr
        # The usage shown is the sub-command's, whether argparse or the command refused.
        assert result.stderr.startswith("usage: floatkey-vendor issue ")
        assert "floatkey-vendor issue: error: " in result.stderr
        assert result.stdout == ""


@pytest.mark.parametrize("expires", ["2026-11-01", "2026-11-28"])
def test_issue_refuses_an_expiry_not_after_the_issue_date_saying_what_to_do(
    dev_vendor_key, expires
):
    result = run(
        "floatkey-vendor",
        "issue",
        "--vendor-key",
        str(dev_vendor_key),
        *ISSUE,
        "--issued",
        "2026-11-28",
        "--expires",
        expires,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: floatkey-vendor issue ")
    assert (
        f"--expires {expires} is not after the issue date 2026-11-28: give a later date "
        "(YYYY-MM-DD, the key's last valid day), or leave out --expires for a key that never "
        "expires." in " ".join(result.stderr.split())
    )


def test_issue_refuses_a_feature_the_catalogue_does_not_list(dev_vendor_key):
    result = run(
        "floatkey-vendor",
        "issue",
        "--vendor-key",
        str(dev_vendor_key),
        *ISSUE[:-1],
        "dataflw,workflow,zzz",
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: floatkey-vendor issue ")
    assert "unknown feature 'dataflw'; did you mean 'dataflow'?" in result.stderr
    assert "unknown feature 'zzz'; the product's features are dataflow, workflow" in result.stderr


def test_issue_with_a_missing_or_broken_catalogue_says_where_and_what_it_must_hold(
    dev_vendor_key, tmp_path
):
    missing = tmp_path / "nope.toml"
    result = run(
        "floatkey-vendor",
        "issue",
        "--vendor-key",
        str(dev_vendor_key),
        "--catalogue",
        str(missing),
        *ISSUE,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"There is no product catalogue at {missing} (named with --catalogue)" in result.stderr
    assert "[features]" in result.stderr
    assert "Traceback" not in result.stderr

    broken = tmp_path / "product.toml"
    broken.write_text("[product]\nname = 'X'\n[features]\ndataflow = \n")
    result = run(
        "floatkey-vendor",
        "issue",
        "--vendor-key",
        str(dev_vendor_key),
        "--catalogue",
        str(broken),
        *ISSUE,
    )
    assert result.returncode == 1
    assert f"The product catalogue {broken} (named with --catalogue) cannot be used" in (
        result.stderr
    )
    assert "not valid TOML" in result.stderr
    assert 'id = "Display name"' in result.stderr


def test_issue_help_says_where_the_catalogue_is_and_how_to_list_it():
    shown = " ".join(run("floatkey-vendor", "issue", "--help").stdout.split())
    assert "product.toml beside --vendor-key" in shown
    assert "'floatkey-vendor features --vendor-key FILE' lists them" in shown


def test_features_lists_ids_and_display_names(tmp_path):
    result = run("floatkey-vendor", "features", "--catalogue", str(CONFIG / "product.toml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("FlowDesigner: 5 features")
    assert "  reporting  Reporting" in result.stdout.splitlines()
    as_json = run(
        "floatkey-vendor", "features", "--vendor-key", str(CONFIG / "dev-vendor.key"), "--json"
    )
    document = json.loads(as_json.stdout)
    assert document["product"] == "FlowDesigner"
    assert document["features"]["subflow"] == "Subflow"

    neither = run("floatkey-vendor", "features")
    assert neither.returncode == 2
    assert neither.stderr.startswith("usage: floatkey-vendor features ")
    missing = run("floatkey-vendor", "features", "--vendor-key", str(tmp_path / "v.key"))
    assert missing.returncode == 1
    assert f"There is no product catalogue at {tmp_path / 'product.toml'}" in missing.stderr


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


def test_inspect_shows_display_names_from_a_catalogue_and_ids_without(dev_vendor_key):
    plain = run("floatkey-vendor", "inspect", FORMAT_2_KEY)
    assert "Features         dataflow, subflow, workflow" in plain.stdout
    named = run("floatkey-vendor", "inspect", FORMAT_2_KEY, "--vendor-key", str(dev_vendor_key))
    assert named.returncode == 0, named.stderr
    assert (
        "Features         Dataflow (dataflow), Subflow (subflow), Workflow (workflow)"
        in named.stdout
    )
    assert "Signature        valid" in named.stdout
    as_json = json.loads(
        run(
            "floatkey-vendor",
            "inspect",
            FORMAT_2_KEY,
            "--catalogue",
            str(CONFIG / "product.toml"),
            "--json",
        ).stdout
    )
    assert as_json["feature_names"]["workflow"] == "Workflow"


def test_inspect_says_how_long_a_key_is_valid():
    day = dt.date(2026, 11, 29)
    assert expiry_text(None, day) == "never expires"
    assert expiry_text(dt.date(2027, 1, 31), day) == "expires 2027-01-31, in 63 days"
    assert expiry_text(dt.date(2026, 11, 30), day) == "expires 2026-11-30, in 1 day"
    assert expiry_text(day, day) == "expires 2026-11-29, today is its last valid day"
    assert expiry_text(dt.date(2024, 1, 31), dt.date(2024, 11, 26)) == (
        "expired on 2024-01-31, 300 days ago"
    )


def test_inspect_shows_expiry_and_product_version_as_of_today(dev_vendor_key):
    required_tool("faketime")
    libfaketime = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), None)
    assert libfaketime is not None, "libfaketime.so.1 not found"
    key = run(
        "floatkey-vendor",
        "issue",
        "--vendor-key",
        str(dev_vendor_key),
        *ISSUE,
        "--product-version",
        "7",
        "--issued",
        "2023-01-01",
        "--expires",
        "2024-01-31",
    ).stdout.strip()
    # Under libfaketime the command's clock reads 2024-11-26 (`env` execs it in place).
    at = ("env", f"LD_PRELOAD={libfaketime}", "FAKETIME=@2024-11-26 12:00:00")
    shown = subprocess.run(
        [*at, command("floatkey-vendor"), "inspect", key],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    assert "Expiry           expired on 2024-01-31, 300 days ago" in shown.stdout
    assert "Product version  7 (this release of floatkey takes version 8 keys only)" in shown.stdout


@pytest.mark.parametrize(
    ("key", "name", "org", "says", "code"),
    [
        (FORMAT_2_KEY, " ada LOVELACE ", ORG.upper(), "matches", None),
        (
            FORMAT_2_KEY,
            "Ada Lovelac",
            ORG,
            "the name does not match (the organization does)",
            "name",
        ),
        (
            FORMAT_2_KEY,
            NAME,
            "AE Ltd",
            "the organization does not match (the name does)",
            "organization",
        ),
        (FORMAT_2_KEY, "x", "y", "neither the name nor the organization matches", "both"),
        (FORMAT_1_KEY, NAME, ORG, "matches", None),
        (
            FORMAT_1_KEY,
            NAME,
            "AE Ltd",
            "the name or the organization does not match (a format 1 key cannot tell which)",
            "name_or_organization",
        ),
    ],
)
def test_inspect_checks_the_licensee_and_says_which_field_does_not_match(
    key, name, org, says, code
):
    shown = run("floatkey-vendor", "inspect", key, "--name", name, "--organization", org)
    assert shown.returncode == (0 if code is None else 1), shown.stderr
    line = next(row for row in shown.stdout.splitlines() if row.startswith("Licensee  "))
    assert says in line
    assert "case and spacing do not matter" in line
    assert f"Format           {parse_product_key(key).key.format_version}" in shown.stdout
    facts = json.loads(
        run(
            "floatkey-vendor", "inspect", key, "--name", name, "--organization", org, "--json"
        ).stdout
    )
    assert facts["licensee_matches"] is (code is None)
    assert facts["licensee_mismatch"] == code


def test_inspect_semantic_errors_show_the_inspect_usage():
    only_name = run("floatkey-vendor", "inspect", FORMAT_2_KEY, "--name", NAME)
    assert only_name.returncode == 2
    assert only_name.stderr.startswith("usage: floatkey-vendor inspect ")
    assert "give both --name and --organization" in only_name.stderr
    bad_key = run("floatkey-vendor", "inspect", FORMAT_2_KEY, "--vendor-public-key", "nonsense")
    assert bad_key.returncode == 2
    assert bad_key.stderr.startswith("usage: floatkey-vendor inspect ")
