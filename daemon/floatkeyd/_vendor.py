"""``floatkey-vendor``: the vendor's side — make a vendor key, issue and inspect product keys.

Exit status: 0 done; 1 refused (a key that does not verify, a key file that exists
or cannot be read); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from floatkey import productkey
from floatkey.errors import FloatkeyError, ProductKeyError
from floatkey.signing import (
    create_private_key_file,
    key_id,
    load_private_key,
    parse_public_key,
    public_key_text,
    verify_signature,
)
from floatkey.version import version_line

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in the form YYYY-MM-DD") from None


def _features(text: str) -> list[str]:
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    for name in names:
        try:
            productkey.check_feature_name(name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="floatkey-vendor",
        description="Create the vendor signing key, issue product keys, inspect keys.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keygen = commands.add_parser("keygen", help="create a vendor key pair")
    keygen.add_argument("--out", type=Path, required=True, help="private key file to create (0600)")

    issue = commands.add_parser("issue", help="issue a product key; prints only the key")
    issue.add_argument("--vendor-key", type=Path, required=True, help="vendor private key file")
    issue.add_argument("--name", required=True, help="licensee name")
    issue.add_argument("--organization", required=True, help="licensee organization")
    issue.add_argument("--seats", type=int, required=True, help="concurrent clients, 1..100000")
    issue.add_argument(
        "--features",
        type=_features,
        required=True,
        help="comma-separated, e.g. dataflow,workflow",
    )
    issue.add_argument(
        "--product-version",
        type=int,
        default=productkey.PRODUCT_VERSION,
        help=f"product major version, 1..99 (default {productkey.PRODUCT_VERSION})",
    )
    issue.add_argument("--issued", type=_date, help="issue date YYYY-MM-DD (default today, UTC)")
    issue.add_argument("--expires", type=_date, help="last valid day YYYY-MM-DD (default never)")

    inspect = commands.add_parser("inspect", help="show what a product key contains")
    inspect.add_argument("key", help="the product key (quote it if it contains spaces)")
    inspect.add_argument("--vendor-public-key", help="check the signature against this key")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _keygen(args: argparse.Namespace) -> int:
    key = create_private_key_file(args.out)
    public = public_key_text(key.public_key())
    print(
        f"Wrote the vendor private key to {args.out} (mode 0600) and the public key to "
        f"{args.out}.pub. Keep the private key offline; give the public key to the "
        "license servers as vendor_public_key.",
        file=sys.stderr,
    )
    print(public)
    return EXIT_OK


def _issue(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    vendor_key = load_private_key(args.vendor_key)
    try:
        text = productkey.issue_product_key(
            vendor_key,
            name=args.name,
            organization=args.organization,
            seats=args.seats,
            features=args.features,
            product_version=args.product_version,
            issued=args.issued,
            expires=args.expires,
        )
    except ValueError as exc:
        parser.error(str(exc))  # exits 2
    print(text)
    return EXIT_OK


def _inspect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    vendor_public = None
    if args.vendor_public_key:
        try:
            vendor_public = parse_public_key(args.vendor_public_key)
        except ValueError as exc:
            parser.error(f"--vendor-public-key: {exc}")
    try:
        signed = productkey.parse_product_key(args.key)
    except ProductKeyError as exc:
        print(f"Refused ({exc.reason}): {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    key = signed.key
    if vendor_public is None:
        signature = "not checked (pass --vendor-public-key)"
        verified = None
    else:
        verified = verify_signature(
            vendor_public,
            signed.signature,
            productkey.signing_message(signed.signed_bytes),
        )
        signature = (
            f"valid, vendor key {key_id(vendor_public)}"
            if verified
            else "INVALID: not issued by this vendor"
        )
    facts = {
        "format_version": productkey.FORMAT_VERSION,
        "product_version": key.product_version,
        "serial": key.serial,
        "licensee_digest": key.licensee_digest.hex(),
        "seats": key.seats,
        "features": list(key.features),
        "issued": key.issued.isoformat(),
        "expires": key.expires.isoformat() if key.expires else None,
        "signature_valid": verified,
    }
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        rows = [
            ("Format", str(productkey.FORMAT_VERSION)),
            ("Product version", str(key.product_version)),
            ("Serial", key.serial),
            ("Licensee digest", f"{key.licensee_digest.hex()} (binds name + organization)"),
            ("Seats", str(key.seats)),
            ("Features", ", ".join(key.features) or "(none)"),
            ("Issued", key.issued.isoformat()),
            ("Expires", key.expires.isoformat() if key.expires else "never"),
            ("Signature", signature),
        ]
        for label, value in rows:
            print(f"{label:<16} {value}")
    return EXIT_REFUSED if verified is False else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run ``floatkey-vendor``; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            return _keygen(args)
        if args.command == "issue":
            return _issue(args, parser)
        return _inspect(args, parser)
    except FloatkeyError as exc:
        print(f"floatkey-vendor: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
