"""``floatkey-vendor``: the vendor's side — make a vendor key, issue and inspect product keys.

The product catalogue (``product.toml``, beside the vendor key) lists the features a key
may carry; ``issue`` refuses any other, ``features`` lists them, ``inspect`` shows their
display names.

Exit status: 0 done; 1 refused (a key that does not verify or is bound to another
licensee, a key or catalogue file that exists or cannot be read); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from floatkey import productkey
from floatkey.cliexit import run_command
from floatkey.errors import ConfigError, FloatkeyError, LicenseeMismatch, ProductKeyError
from floatkey.signing import (
    create_private_key_file,
    key_id,
    load_private_key,
    parse_public_key,
    public_key_text,
    verify_signature,
)
from floatkey.version import version_line
from floatkeyd.catalogue import CATALOGUE_FILE, Catalogue, load_catalogue

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

# What a catalogue must contain, for the refusals that find none or a broken one.
_CATALOGUE_SHAPE = (
    'A product catalogue names the product under [product] (name = "FlowDesigner") and '
    'lists its features under [features], one line each: id = "Display name" (an id is '
    "a lower-case letter, then lower-case letters, digits or underscores)."
)

# Written by keygen beside a new vendor key: valid TOML, but no features until the
# vendor lists them, so that issue refuses to guess them.
STARTER_CATALOGUE = """\
# The product catalogue: the features your product has, and how people read them.
# floatkey-vendor issue reads it beside the vendor key and refuses any feature it
# does not list (a misspelled feature is never issued); floatkey-vendor features
# lists them. Install a copy beside floatkeyd.toml (catalogue = "product.toml") and
# administrators see the display names too.
# A key carries only the ids on the left (a lower-case letter, then up to 31
# lower-case letters, digits or underscores): a display name can change without
# reissuing keys; an id, once issued, never changes.

[product]
name = "Your product"

[features]
# List your product's features here, one a line, then issue keys. For example:
# dataflow = "Dataflow"
# workflow = "Workflow"
"""


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


def _catalogue_options(command: argparse.ArgumentParser, *, required: bool) -> None:
    where = command.add_mutually_exclusive_group(required=required)
    where.add_argument(
        "--vendor-key",
        type=Path,
        help=f"vendor private key file; the catalogue is the {CATALOGUE_FILE} beside it",
    )
    where.add_argument(
        "--catalogue", type=Path, metavar="PATH", help=f"the product catalogue ({CATALOGUE_FILE})"
    )


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="floatkey-vendor",
        description="Create the vendor signing key, issue product keys, inspect keys.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keygen = commands.add_parser(
        "keygen",
        help="create a vendor key pair (and a starter product catalogue beside it)",
        description=(
            "Create a vendor key pair. Beside it, unless one is there, write a starter "
            f"product catalogue ({CATALOGUE_FILE}): list the product's features in it "
            "before issuing keys."
        ),
    )
    keygen.add_argument("--out", type=Path, required=True, help="private key file to create (0600)")

    issue = commands.add_parser(
        "issue",
        help="issue a product key; prints only the key",
        description=(
            "Issue a product key and print only the key. Its features must be listed in the "
            f"product catalogue: the {CATALOGUE_FILE} beside --vendor-key, or the file "
            "--catalogue names. 'floatkey-vendor features --vendor-key FILE' lists them."
        ),
    )
    issue.add_argument("--vendor-key", type=Path, required=True, help="vendor private key file")
    issue.add_argument(
        "--catalogue",
        type=Path,
        metavar="PATH",
        help=f"the product catalogue (default: {CATALOGUE_FILE} beside --vendor-key)",
    )
    issue.add_argument("--name", required=True, help="licensee name")
    issue.add_argument("--organization", required=True, help="licensee organization")
    issue.add_argument("--seats", type=int, required=True, help="concurrent clients, 1..100000")
    issue.add_argument(
        "--features",
        type=_features,
        required=True,
        help="comma-separated feature ids from the catalogue, e.g. dataflow,workflow "
        "('floatkey-vendor features' lists them)",
    )
    issue.add_argument(
        "--product-version",
        type=int,
        default=productkey.PRODUCT_VERSION,
        help=f"product major version, 1..99 (default {productkey.PRODUCT_VERSION})",
    )
    issue.add_argument("--issued", type=_date, help="issue date YYYY-MM-DD (default today, UTC)")
    issue.add_argument(
        "--expires",
        type=_date,
        help="last valid day YYYY-MM-DD, after the issue date (default: never expires)",
    )

    features = commands.add_parser(
        "features",
        help="list the features of the product catalogue",
        description=(
            "List the feature ids a key may carry and their display names, from the product "
            f"catalogue: the {CATALOGUE_FILE} beside --vendor-key, or the file --catalogue names."
        ),
    )
    _catalogue_options(features, required=True)
    features.add_argument("--json", action="store_true", help="print JSON")

    inspect = commands.add_parser(
        "inspect",
        help="show what a product key contains",
        description=(
            "Show what a product key contains: its expiry, whether this release takes its "
            "product version, and, when asked, whether its signature verifies and whether it "
            "was issued to a name and organization. Exit status 1 when either does not."
        ),
    )
    inspect.add_argument("key", help="the product key (quote it if it contains spaces)")
    signer = inspect.add_mutually_exclusive_group()
    signer.add_argument("--vendor-public-key", help="check the signature against this key")
    signer.add_argument(
        "--vendor-key",
        type=Path,
        help="vendor private key file: check the signature against it, and show the feature "
        f"names of the {CATALOGUE_FILE} beside it",
    )
    inspect.add_argument(
        "--catalogue", type=Path, metavar="PATH", help="show the feature names of this catalogue"
    )
    inspect.add_argument("--name", help="check that the key was issued to this licensee name")
    inspect.add_argument("--organization", help="... and this organization (give both)")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    return parser, {"keygen": keygen, "issue": issue, "features": features, "inspect": inspect}


# --- the catalogue ---------------------------------------------------------------------


def _catalogue_path(args: argparse.Namespace) -> tuple[Path, str]:
    """Where the catalogue is, and how it was found (for the refusals)."""
    if args.catalogue is not None:
        return args.catalogue, "named with --catalogue"
    vendor_key: Path = args.vendor_key
    return vendor_key.parent / CATALOGUE_FILE, f"looked for beside the vendor key {vendor_key}"


def _load_catalogue(path: Path, found: str) -> Catalogue:
    """The catalogue at ``path``; raises ``ConfigError`` saying where and what it must hold."""
    if not path.exists():
        raise ConfigError(
            f"There is no product catalogue at {path} ({found}). {_CATALOGUE_SHAPE} "
            "'floatkey-vendor keygen' writes a starter one beside a new vendor key; give "
            "another file with --catalogue PATH.",
        )
    try:
        return load_catalogue(path)
    except ConfigError as exc:
        problem = exc.message.removeprefix(f"{path}: ")
        raise ConfigError(
            f"The product catalogue {path} ({found}) cannot be used: {problem} {_CATALOGUE_SHAPE}",
        ) from None


def _write_starter_catalogue(vendor_key: Path) -> str:
    """Write a starter catalogue beside a new vendor key unless one is there; say which."""
    path = vendor_key.parent / CATALOGUE_FILE
    try:
        with path.open("x", encoding="utf-8") as out:
            out.write(STARTER_CATALOGUE)
    except FileExistsError:
        return (
            f"The product catalogue {path} is already there: 'floatkey-vendor issue' takes "
            "the features it lists."
        )
    except OSError as exc:
        return (
            f"Could not write a starter product catalogue to {path} ({exc.strerror}); "
            f"'floatkey-vendor issue' needs one there. {_CATALOGUE_SHAPE}"
        )
    return (
        f"Wrote a starter product catalogue to {path}: list your product's features in it "
        '(id = "Display name" under [features]) before issuing keys; '
        "'floatkey-vendor features' shows what it lists."
    )


# --- commands --------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    key = create_private_key_file(args.out)
    public = public_key_text(key.public_key())
    print(
        f"Wrote the vendor private key to {args.out} (mode 0600) and the public key to "
        f"{args.out}.pub. Keep the private key offline; give the public key to the "
        "license servers as vendor_public_key.",
        file=sys.stderr,
    )
    print(_write_starter_catalogue(args.out), file=sys.stderr)
    print(public)
    return EXIT_OK


def _check_dates(args: argparse.Namespace, sub: argparse.ArgumentParser) -> dt.date:
    """The issue date; exits 2 with the sub-command's usage for dates a key cannot carry."""
    issued: dt.date = args.issued or dt.datetime.now(dt.UTC).date()
    first, last = productkey.EPOCH, productkey.LAST_DAY
    if not first <= issued <= last:
        sub.error(f"--issued {issued} is outside what a key can carry: {first} to {last}.")
    expires: dt.date | None = args.expires
    if expires is not None and expires <= issued:
        sub.error(
            f"--expires {expires} is not after the issue date {issued}: give a later date "
            "(YYYY-MM-DD, the key's last valid day), or leave out --expires for a key that "
            "never expires.",
        )
    if expires is not None and expires > last:
        sub.error(
            f"--expires {expires} is after {last}, the last day a key can carry: give an "
            "earlier date, or leave out --expires for a key that never expires.",
        )
    return issued


def _issue(args: argparse.Namespace, sub: argparse.ArgumentParser) -> int:
    issued = _check_dates(args, sub)
    vendor_key = load_private_key(args.vendor_key)
    catalogue = _load_catalogue(*_catalogue_path(args))
    unknown = [problem for f in args.features if (problem := catalogue.unknown(f)) is not None]
    if unknown:
        sub.error("\n".join(unknown))
    try:
        text = productkey.issue_product_key(
            vendor_key,
            name=args.name,
            organization=args.organization,
            seats=args.seats,
            features=args.features,
            product_version=args.product_version,
            issued=issued,
            expires=args.expires,
        )
    except ValueError as exc:
        sub.error(str(exc))
    print(text)
    return EXIT_OK


def _features_command(args: argparse.Namespace) -> int:
    path, found = _catalogue_path(args)
    catalogue = _load_catalogue(path, found)
    if args.json:
        document = {
            "product": catalogue.product,
            "catalogue": str(path),
            "features": catalogue.features,
        }
        print(json.dumps(document, indent=2))
        return EXIT_OK
    print(f"{catalogue.product}: {len(catalogue.features)} features ({path})")
    width = max(len(feature) for feature in catalogue.features)
    for feature, display in catalogue.features.items():
        print(f"  {feature:<{width}}  {display}")
    return EXIT_OK


def expiry_text(expires: dt.date | None, today: dt.date) -> str:
    """How long a key is valid, as of ``today``: it is valid through ``expires``."""
    if expires is None:
        return "never expires"
    days = (expires - today).days
    if days < 0:
        return f"expired on {expires}, {_days(-days)} ago"
    if days == 0:
        return f"expires {expires}, today is its last valid day"
    return f"expires {expires}, in {_days(days)}"


def _days(count: int) -> str:
    return "1 day" if count == 1 else f"{count} days"


def _mismatch_code(mismatch: LicenseeMismatch | None) -> str | None:
    """``name``, ``organization``, ``both``, ``name_or_organization`` (format 1), or ``None``."""
    if mismatch is None:
        return None
    if mismatch.fields is None:
        return "name_or_organization"
    return mismatch.fields[0] if len(mismatch.fields) == 1 else "both"


def _licensee_text(mismatch: LicenseeMismatch | None) -> str:
    if mismatch is None:
        return "matches (the name and the organization; case and spacing do not matter)"
    if mismatch.fields == ("name",):
        what = "the name does not match (the organization does)"
    elif mismatch.fields == ("organization",):
        what = "the organization does not match (the name does)"
    elif mismatch.fields:
        what = "neither the name nor the organization matches"
    else:
        what = "the name or the organization does not match (a format 1 key cannot tell which)"
    return f"DOES NOT MATCH: {what}; case and spacing do not matter"


def _inspect_catalogue(args: argparse.Namespace) -> tuple[Catalogue | None, str]:
    """The catalogue to show names from, or ``None`` and why not."""
    if args.catalogue is not None:
        return _load_catalogue(args.catalogue, "named with --catalogue"), ""
    if args.vendor_key is not None:
        path, found = _catalogue_path(args)
        if path.exists():
            return _load_catalogue(path, found), ""
        return None, f" (ids: no {CATALOGUE_FILE} beside the vendor key)"
    return None, ""


@dataclass(frozen=True, slots=True)
class _Inspection:
    """What ``inspect`` found out about one key."""

    key: productkey.ProductKey
    today: dt.date
    #: ``None`` when no vendor key was given to check the signature against.
    verified: bool | None
    signature: str
    #: ``None`` when no name and organization were given to check.
    licensee_checked: bool
    mismatch: LicenseeMismatch | None
    catalogue: Catalogue | None
    catalogue_note: str

    @property
    def refused(self) -> bool:
        return self.verified is False or self.mismatch is not None


def _vendor_public(
    args: argparse.Namespace, sub: argparse.ArgumentParser
) -> Ed25519PublicKey | None:
    """The vendor public key to check a signature against, if one was given."""
    if args.vendor_public_key:
        try:
            return parse_public_key(args.vendor_public_key)
        except ValueError as exc:
            sub.error(f"--vendor-public-key: {exc}")
    if args.vendor_key is not None:
        return load_private_key(args.vendor_key).public_key()
    return None


def _inspect(args: argparse.Namespace, sub: argparse.ArgumentParser) -> int:
    if (args.name is None) != (args.organization is None):
        sub.error("give both --name and --organization to check the licensee a key binds")
    vendor_public = _vendor_public(args, sub)
    catalogue, catalogue_note = _inspect_catalogue(args)
    try:
        signed = productkey.parse_product_key(args.key)
    except ProductKeyError as exc:
        print(f"Refused ({exc.reason}): {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    verified = None
    signature = "not checked (pass --vendor-public-key or --vendor-key)"
    if vendor_public is not None:
        message = productkey.signing_message(signed.signed_bytes)
        verified = verify_signature(vendor_public, signed.signature, message)
        signature = (
            f"valid, vendor key {key_id(vendor_public)}"
            if verified
            else "INVALID: not issued by this vendor"
        )
    mismatch = None
    if args.name is not None:
        try:
            signed.key.check_licensee(args.name, args.organization)
        except LicenseeMismatch as exc:
            mismatch = exc
    found = _Inspection(
        key=signed.key,
        today=dt.datetime.now(dt.UTC).date(),
        verified=verified,
        signature=signature,
        licensee_checked=args.name is not None,
        mismatch=mismatch,
        catalogue=catalogue,
        catalogue_note=catalogue_note,
    )
    if args.json:
        print(json.dumps(_inspection_facts(found), indent=2))
    else:
        for label, value in _inspection_rows(found):
            print(f"{label:<16} {value}")
    return EXIT_REFUSED if found.refused else EXIT_OK


def _inspection_facts(found: _Inspection) -> dict[str, object]:
    key = found.key
    facts: dict[str, object] = {
        "format_version": key.format_version,
        "product_version": key.product_version,
        "accepted_product_version": productkey.PRODUCT_VERSION,
        "serial": key.serial,
        "licensee_digest": key.licensee_digest.hex(),
        "seats": key.seats,
        "features": list(key.features),
        "issued": key.issued.isoformat(),
        "expires": key.expires.isoformat() if key.expires else None,
        "expired": key.is_expired(found.today),
        "signature_valid": found.verified,
    }
    if found.catalogue is not None:
        facts["feature_names"] = {f: found.catalogue.display(f) for f in key.features}
    if found.licensee_checked:
        facts["licensee_matches"] = found.mismatch is None
        facts["licensee_mismatch"] = _mismatch_code(found.mismatch)
    return facts


def _inspection_rows(found: _Inspection) -> list[tuple[str, str]]:
    key = found.key
    digest = key.licensee_digest.hex()
    if key.format_version == 1:
        binding = f"{digest} (one digest: name + organization)"
    else:
        binding = f"{digest[:8]} {digest[8:]} (name, organization)"
    version = str(key.product_version)
    if key.product_version != productkey.PRODUCT_VERSION:
        version += (
            f" (this release of floatkey takes version {productkey.PRODUCT_VERSION} keys only)"
        )
    rows = [
        ("Format", str(key.format_version)),
        ("Product version", version),
        ("Serial", key.serial),
        ("Licensee digest", binding),
    ]
    if found.licensee_checked:
        rows.append(("Licensee", _licensee_text(found.mismatch)))
    return [
        *rows,
        ("Seats", str(key.seats)),
        ("Features", _feature_list(key.features, found.catalogue, found.catalogue_note)),
        ("Issued", key.issued.isoformat()),
        ("Expiry", expiry_text(key.expires, found.today)),
        ("Signature", found.signature),
    ]


def _feature_list(features: tuple[str, ...], catalogue: Catalogue | None, note: str) -> str:
    if not features:
        return "(none)"
    if catalogue is None:
        return ", ".join(features) + note
    return ", ".join(
        f"{catalogue.display(f)} ({f})"
        if f in catalogue.features
        else f"{f} (not in the catalogue)"
        for f in features
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``floatkey-vendor``; return the exit status."""
    parser, subs = _parser()
    args = parser.parse_args(argv)
    sub = subs[args.command]
    return run_command(lambda: _dispatch(args, sub))


def _dispatch(args: argparse.Namespace, sub: argparse.ArgumentParser) -> int:
    try:
        if args.command == "keygen":
            return _keygen(args)
        if args.command == "issue":
            return _issue(args, sub)
        if args.command == "features":
            return _features_command(args)
        return _inspect(args, sub)
    except FloatkeyError as exc:
        print(f"floatkey-vendor: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
