"""floatkey: the client side of the floatkey license server, and the shared core.

The product key codec (:mod:`floatkey.productkey`), the signing keys
(:mod:`floatkey.signing`) and the error hierarchy (:mod:`floatkey.errors`).
"""

from floatkey.errors import (
    FloatkeyError,
    KeyExpired,
    KeyFileError,
    KeyMalformed,
    KeyMistyped,
    KeyNotIssuedByVendor,
    LicenseeMismatch,
    ProductKeyError,
    SeatsOutOfRange,
    UnknownKeyFormat,
    WrongProductVersion,
)
from floatkey.productkey import (
    PRODUCT_VERSION,
    ProductKey,
    issue_product_key,
    parse_product_key,
    verify_product_key,
)

__all__ = [
    "PRODUCT_VERSION",
    "FloatkeyError",
    "KeyExpired",
    "KeyFileError",
    "KeyMalformed",
    "KeyMistyped",
    "KeyNotIssuedByVendor",
    "LicenseeMismatch",
    "ProductKey",
    "ProductKeyError",
    "SeatsOutOfRange",
    "UnknownKeyFormat",
    "WrongProductVersion",
    "issue_product_key",
    "parse_product_key",
    "verify_product_key",
]
