"""Every readable record format through the daemon's unlock path (in-process).

Keys are issued in format 2; servers hold format 1 keys from earlier releases, which
must keep activating and re-verifying at every start. The real-process refusals are in
tests/test_daemon.py (``test_refused_keys_change_nothing``).
"""

from __future__ import annotations

import msgspec
import pytest

from inprocess import NAME, MemoryLink, Wall, ask, running, unlock_command, write_config
from licensing import FORMAT_1_KEY, FORMAT_2_KEY


@pytest.fixture
def link():
    return MemoryLink()


@pytest.fixture
def wall():
    return Wall()


@pytest.mark.parametrize("key", [FORMAT_1_KEY, FORMAT_2_KEY], ids=["format-1", "format-2"])
async def test_a_key_of_either_format_activates_and_is_verified_again_at_start(
    tmp_path, link, wall, key
):
    config = write_config(tmp_path)
    async with running(config, link, wall, serve=False) as daemon:
        result = await ask(daemon, link, unlock_command(key, "f1"))
        assert result.ok, result.message
        assert daemon.authority.status == "licensed"
    async with running(config, link, wall, serve=False) as daemon:
        assert daemon.authority.status == "licensed"
        info = daemon.authority.info
        assert info is not None
        assert (info.serial, info.seats) == ("0123456789ab", 10)


@pytest.mark.parametrize(
    ("key", "name", "organization", "words"),
    [
        (FORMAT_2_KEY, NAME, "Difference Engines Ltd", "another organization: the name matches"),
        (FORMAT_2_KEY, "Charles Babbage", "Difference", "neither the name nor the organization"),
        (FORMAT_1_KEY, NAME, "Difference Engines Ltd", "the name or the organization does not"),
    ],
)
async def test_the_unlock_refusal_says_which_field_does_not_match(
    tmp_path, link, wall, key, name, organization, words
):
    async with running(write_config(tmp_path), link, wall, serve=False) as daemon:
        command = msgspec.structs.replace(
            unlock_command(key, "m1"), name=name, organization=organization
        )
        result = await ask(daemon, link, command)
        assert (result.ok, result.reason) == (False, "licensee_mismatch")
        assert words in result.message
        assert result.message.endswith("case and spacing do not matter.")
        assert daemon.authority.status == "unlicensed"
