"""The product catalogue: known features, suggestions, display names, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from floatkey.errors import ConfigError
from floatkeyd.catalogue import Catalogue, load_catalogue

DEV_CATALOGUE = Path(__file__).parent.parent / "config" / "product.toml"


def test_the_development_catalogue_lists_the_seed_features() -> None:
    catalogue = load_catalogue(DEV_CATALOGUE)
    assert catalogue.product == "FlowDesigner"
    assert list(catalogue.features) == ["dataflow", "workflow", "subflow", "reporting", "scheduler"]
    assert catalogue.display("dataflow") == "Dataflow"
    assert catalogue.display("legacy_export") == "legacy_export"


def test_a_misspelled_feature_is_refused_with_the_nearest_known_one() -> None:
    catalogue = load_catalogue(DEV_CATALOGUE)
    assert catalogue.unknown("workflow") is None
    assert catalogue.unknown("dataflw") == "unknown feature 'dataflw'; did you mean 'dataflow'?"
    far = catalogue.unknown("zzz")
    assert far is not None
    assert "dataflow, workflow, subflow, reporting, scheduler" in far


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[product]\nname='X'\n[features]\n", "lists no features"),
        ("[product]\nname='X'\n[features]\nData-Flow='Dataflow'\n", "not a feature name"),
        ("[product]\nname='X'\n[features]\ndataflow=' '\n", "empty display name"),
        ("[features]\ndataflow='Dataflow'\n", "product"),
        ("[product]\nname='X'\ncolour='red'\n[features]\na='A'\n", "colour"),
    ],
)
def test_a_bad_catalogue_is_refused_naming_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "product.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem) as caught:
        load_catalogue(path)
    assert str(path) in str(caught.value)


def test_a_catalogue_without_a_close_match_names_every_feature() -> None:
    catalogue = Catalogue(product="P", features={"alpha": "Alpha", "beta": "Beta"})
    assert catalogue.suggestion("alpah") == "alpha"
    assert catalogue.suggestion("q") is None
