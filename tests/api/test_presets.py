"""Marketplace presets as clients see them: GET /v1/presets (key required) lists the
built-ins and the operator's registry file's [presets.*] (overrides and new ones), and a
bad table stops the process at start, naming the key."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from shared.errors import ConfigError
from shared.presets import load_presets
from shared.registry import load_registry

REGISTRY = """
[models.shop]
source = "builtin:echo"
kind = "echo"

# An override: only the keys given change.
[presets.instagram-portrait]
quality = 80

[presets.etsy-listing]
label = "Etsy listing photo"
width = 2000
height = 1600
format = "png"
source = "https://help.etsy.com/hc/en-us/articles/115015663347"
"""


@pytest.fixture(scope="module")
def operator_client(settings, tmp_path_factory):
    path = tmp_path_factory.mktemp("registry") / "models.toml"
    path.write_text(REGISTRY)
    with TestClient(create_app(settings.model_copy(update={"models": path}))) as client:
        yield client


def test_presets_list_the_builtins_with_their_rules(client, new_key):
    response = client.get("/v1/presets", headers={"Authorization": f"Bearer {new_key(None)}"})
    assert response.status_code == 200, response.text
    presets = {p["name"]: p for p in response.json()["presets"]}
    assert {"amazon-main", "amazon-lifestyle", "shopify-square", "instagram-portrait"} <= set(
        presets
    )
    main = presets["amazon-main"]
    assert (main["width"], main["height"], main["format"], main["background"]) == (
        1600,
        1600,
        "jpeg",
        "white",
    )
    assert main["needs_cutout"] and main["min_product_fraction"] == 0.85
    assert main["source"].startswith("https://sellercentral.amazon.com/")
    assert (presets["web-hero"]["width"], presets["web-hero"]["format"]) == (1920, "webp")
    assert presets["shopify-square"]["max_bytes"] == 20_000_000
    assert not presets["instagram-portrait"]["needs_cutout"]


def test_presets_need_a_key(client):
    assert client.get("/v1/presets").status_code == 401


def test_operator_presets_override_and_add(operator_client, new_key):
    headers = {"Authorization": f"Bearer {new_key(None)}"}
    presets = {
        p["name"]: p for p in operator_client.get("/v1/presets", headers=headers).json()["presets"]
    }
    portrait = presets["instagram-portrait"]
    assert (portrait["quality"], portrait["width"], portrait["height"]) == (80, 1080, 1350)
    etsy = presets["etsy-listing"]
    assert (etsy["width"], etsy["height"], etsy["format"], etsy["fit"]) == (
        2000,
        1600,
        "png",
        "crop",
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[presets.x]\nlabel = "X"\nwidth = 10\nheight = 10\ncolour = "red"\n', "colour"),
        ('[presets.x]\nlabel = "X"\nwidth = 10\n', "height required"),
        ('[presets.amazon-main]\nformat = "gif"\n', "format 'gif'"),
        ("[presets.amazon-main]\nmin_product_fraction = 0.95\n", "min_product_fraction"),
        ('[presets.Bad_Name]\nlabel = "X"\nwidth = 1\nheight = 1\n', "names are lowercase"),
    ],
)
def test_bad_preset_table_stops_the_registry_naming_the_key(tmp_path, table, message):
    path = tmp_path / "models.toml"
    path.write_text(table)
    with pytest.raises(ConfigError, match=message):
        load_registry(path)
    assert "amazon-main" in load_presets(None)
