"""The product catalogue: the features a product has, and the names people read.

A product key carries only feature ids (``dataflow``), six bits a character, so keys
stay short. The catalogue (``product.toml``, kept beside the vendor key and installed
with the server) says which ids exist and how they are shown (``Dataflow``):

    [product]
    name = "FlowDesigner"

    [features]
    dataflow = "Dataflow"
    workflow = "Workflow"

``floatkey-vendor issue`` refuses a feature the catalogue does not list, suggesting the
nearest one, so a misspelled feature is never issued; ``floatkeyd`` hands the display
names to administrators' tools.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from floatkey import productkey
from floatkey.configfile import load_toml
from floatkey.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["CATALOGUE_FILE", "Catalogue", "load_catalogue"]

#: The catalogue's file name beside the vendor key.
CATALOGUE_FILE = "product.toml"


class _Product(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str


class _CatalogueFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    product: _Product
    features: dict[str, str]


@dataclass(frozen=True, slots=True)
class Catalogue:
    """A product's name and its features, id → display name, in the file's order."""

    product: str
    features: dict[str, str] = field(default_factory=dict)

    def display(self, feature: str) -> str:
        """How ``feature`` is shown; an id the catalogue does not know is shown as is."""
        return self.features.get(feature, feature)

    def suggestion(self, feature: str) -> str | None:
        """The known id ``feature`` was most likely meant to be, if any is close."""
        close = difflib.get_close_matches(feature, list(self.features), n=1, cutoff=0.6)
        return close[0] if close else None

    def unknown(self, feature: str) -> str | None:
        """Why ``feature`` cannot be issued, or ``None`` when the catalogue lists it."""
        if feature in self.features:
            return None
        hint = self.suggestion(feature)
        if hint is not None:
            return f"unknown feature {feature!r}; did you mean {hint!r}?"
        return f"unknown feature {feature!r}; the product's features are {', '.join(self.features)}"


def load_catalogue(path: Path) -> Catalogue:
    """Read a ``product.toml``. Raises ``ConfigError`` naming the file and the problem."""
    data = load_toml(path, _CatalogueFile)
    if not data.features:
        raise ConfigError(f"{path}: [features] lists no features.")
    for feature, display in data.features.items():
        try:
            productkey.check_feature_name(feature)
        except ValueError as exc:
            raise ConfigError(f"{path}: [features] {exc}.") from None
        if not display.strip():
            raise ConfigError(f"{path}: [features] {feature} has an empty display name.")
    return Catalogue(product=data.product.name, features=dict(data.features))
