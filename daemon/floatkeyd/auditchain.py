r"""The audit log's hash chain and signed head: pure, and written down for other verifiers.

Each audit row carries ``hash = SHA-256(previous row's hash, this row's content)``, the
content being the row's sequence number, time, actor, action, outcome, reason and detail
exactly as stored. With every row the daemon also signs the new chain head (sequence
number and hash) with its server key, in the same transaction. :func:`verify_chain`
walks the rows and the head and says which row was altered, removed or inserted.

What it proves, to someone with the server's public key: no row was edited, removed or
inserted, and none cut off the end, since the head was signed. What it cannot: a whole
database put back to an older state (an old backup, or an old signed head saved and
restored with the rows after it deleted) is a consistent older log; the daemon also
writes each head to its journal, to compare with. And whoever holds the server's
private key (root on the license server) can rewrite and sign everything
(docs/SECURITY.md).

The canonical form of a row, for another implementation: the UTF-8 of the JSON array
``[previous hash, seq, ts, actor, action, outcome, reason, detail]`` with no spaces
(``separators=(",", ":")``), non-ASCII characters as they are (``ensure_ascii=False``),
``detail`` being the stored JSON text; the head message is
``floatkey/v1 audit head\n{seq}:{hash}:{signed_at}``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from floatkey.signing import b64url_decode, verify_signature

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["AuditRowData", "Head", "Verdict", "head_message", "row_hash", "verify_chain"]

#: The hash before the first row.
GENESIS = "0" * 64
_HEAD_CONTEXT = b"floatkey/v1 audit head\n"


@dataclass(frozen=True, slots=True)
class AuditRowData:
    """One stored audit row, as the chain sees it."""

    seq: int
    ts: int
    actor: str
    action: str
    outcome: str
    reason: str
    detail: str
    hash: str


@dataclass(frozen=True, slots=True)
class Head:
    """The latest signed chain head."""

    seq: int
    hash: str
    kid: str
    signature: str
    signed_at: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :func:`verify_chain` found: ``intact``, with a sentence either way."""

    intact: bool
    rows: int
    message: str
    bad_seq: int | None = None


def row_hash(previous: str, seq: int, ts: int, fields: Sequence[str]) -> str:
    """The chain hash of a row: SHA-256 over the previous hash and the row's content."""
    content = json.dumps([previous, seq, ts, *fields], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(content.encode()).hexdigest()


def head_message(seq: int, chain_hash: str, signed_at: int) -> bytes:
    """What the server key signs for a chain head."""
    return _HEAD_CONTEXT + f"{seq}:{chain_hash}:{signed_at}".encode()


def _own_hash(previous: str, row: AuditRowData) -> str:
    fields = (row.actor, row.action, row.outcome, row.reason, row.detail)
    return row_hash(previous, row.seq, row.ts, fields)


def _broken(rows: Sequence[AuditRowData], message: str, seq: int | None = None) -> Verdict:
    return Verdict(intact=False, rows=len(rows), message=message, bad_seq=seq)


def verify_chain(  # noqa: C901, PLR0911 - one walk, each failure its own sentence
    rows: Sequence[AuditRowData], head: Head | None, server_key: Ed25519PublicKey
) -> Verdict:
    """Walk ``rows`` (oldest first) and ``head``; say whether the log is intact.

    Every row is chained from the first (rows from before the chain got their hashes when
    the database was upgraded), so the walk starts at row 1.
    """
    chained = rows
    previous, expected_seq = GENESIS, 1
    for row in chained:
        if row.seq < expected_seq:
            return _broken(rows, f"Row {row.seq} was inserted.", row.seq)
        if row.seq > expected_seq:
            return _broken(
                rows, f"Rows {expected_seq} to {row.seq - 1} were removed.", expected_seq
            )
        if not row.hash:
            return _broken(rows, f"Row {row.seq} was altered (its chain hash is gone).", row.seq)
        if _own_hash(previous, row) != row.hash:
            # Its own content, or its link to the row before, no longer matches.
            return _broken(rows, f"Row {row.seq} was altered.", row.seq)
        previous, expected_seq = row.hash, row.seq + 1
    if head is None:
        if not chained:
            return Verdict(intact=True, rows=0, message="The audit log is empty.")
        return _broken(rows, "The signed chain head is missing: it was removed.")
    try:
        message = head_message(head.seq, head.hash, head.signed_at)
        signed = verify_signature(server_key, b64url_decode(head.signature), message)
    except ValueError:
        signed = False
    if not signed:
        return _broken(rows, "The chain head's signature is not the server's.")
    last = chained[-1] if chained else None
    if last is None or last.seq < head.seq:
        gone = (last.seq + 1) if last else 1
        return _broken(rows, f"Rows {gone} to {head.seq} were removed from the end.", gone)
    at_head = next((row for row in reversed(chained) if row.seq == head.seq), None)
    if at_head is None or at_head.hash != head.hash:
        return _broken(
            rows,
            f"The log up to row {head.seq} was rewritten: it no longer matches its signed head.",
            head.seq,
        )
    if last.seq > head.seq:
        return _broken(
            rows,
            f"Row {head.seq + 1} and after were added after the last signed head.",
            head.seq + 1,
        )
    return Verdict(
        intact=True,
        rows=len(rows),
        message=f"{len(chained)} rows, intact; the last signed at row {head.seq}.",
    )
