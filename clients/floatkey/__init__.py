"""floatkey: the client side of the floatkey license server, and the shared core.

:class:`Agent` (hold a seat, read the features, stop when told) and what it tells the
application (:mod:`floatkey.notices`), the license file an application can verify
(:func:`verify_license_file`, :mod:`floatkey.licensefile`), the product key codec
(:mod:`floatkey.productkey`), the wire protocol (:mod:`floatkey.protocol`,
:mod:`floatkey.envelope`), signing keys (:mod:`floatkey.signing`) and the error
hierarchy (:mod:`floatkey.errors`).
"""

from floatkey.agent import Agent
from floatkey.config import AgentConfig, load_agent_config
from floatkey.errors import (
    AgentError,
    ConfigError,
    FeatureNotLicensed,
    FloatkeyError,
    KeyExpired,
    KeyFileError,
    KeyMalformed,
    KeyMistyped,
    KeyNotIssuedByVendor,
    LicenseeMismatch,
    LicenseFileInvalid,
    NoAnswer,
    ProductKeyError,
    SeatsOutOfRange,
    ServerKeyChanged,
    UnknownKeyFormat,
    WrongProductVersion,
)
from floatkey.licensefile import VerifiedLicense, verify_license_file
from floatkey.notices import Denial, ExpiryWarning, LicenseView, ShutdownReason, ShutdownSignal
from floatkey.productkey import (
    PRODUCT_VERSION,
    ProductKey,
    issue_product_key,
    parse_product_key,
    verify_product_key,
)

__all__ = [
    "PRODUCT_VERSION",
    "Agent",
    "AgentConfig",
    "AgentError",
    "ConfigError",
    "Denial",
    "ExpiryWarning",
    "FeatureNotLicensed",
    "FloatkeyError",
    "KeyExpired",
    "KeyFileError",
    "KeyMalformed",
    "KeyMistyped",
    "KeyNotIssuedByVendor",
    "LicenseFileInvalid",
    "LicenseView",
    "LicenseeMismatch",
    "NoAnswer",
    "ProductKey",
    "ProductKeyError",
    "SeatsOutOfRange",
    "ServerKeyChanged",
    "ShutdownReason",
    "ShutdownSignal",
    "UnknownKeyFormat",
    "VerifiedLicense",
    "WrongProductVersion",
    "issue_product_key",
    "load_agent_config",
    "parse_product_key",
    "verify_license_file",
    "verify_product_key",
]
