"""The console's license panel warns inside the daemon's expiry warning window."""

from __future__ import annotations

import msgspec

from floatkey import protocol
from floatkeyd.console import app

LICENSE = protocol.LicenseInfo(
    licensee="Ada Lovelace",
    organization="Analytical Engines Ltd",
    seats=10,
    features=["dataflow"],
    product_version=8,
    serial="0123456789ab",
    issued="2026-11-01",
    expires="2026-12-31",
)
STATUS = protocol.StatusReport(
    server="licenses",
    status="licensed",
    license=LICENSE,
    generation=1,
    revision=2,
    seats_in_use=3,
    unlicensed_sessions=0,
    awaiting_release=0,
    fingerprint="f55fec8ea50ebc57",
    broker="mqtt://127.0.0.1:1883",
)


def panel(status: protocol.StatusReport) -> str:
    template = app._templates().get_template("_license_panel.html")
    return template.render(viewer=None, error="", **app._license_view(status))


def test_the_banner_shows_inside_the_warning_window_only():
    inside = panel(msgspec.structs.replace(STATUS, days_left=7, expiring=True))
    assert 'id="expiry-warning"' in inside
    assert "The license expires in 7 days (its last day is 2026-12-31)" in inside
    assert "(7 days left)" in inside  # the daemon's count, not the console's clock
    last_day = panel(msgspec.structs.replace(STATUS, days_left=0, expiring=True))
    assert "The license expires at the end of today" in last_day
    outside = panel(msgspec.structs.replace(STATUS, days_left=40, expiring=False))
    assert "expiry-warning" not in outside
    assert "expiry-warning" not in panel(STATUS)  # a daemon that does not say
