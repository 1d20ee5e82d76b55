"""The embedded store (a folder): objects round trip, and no key reaches outside the folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import StorageError
from shared.storage import LocalStorage

# Every way a key could name something outside the root, or the root itself.
ESCAPING_KEYS = ["../outside", "a/../../outside", "/etc/passwd", "", ".", "a/..", "a/../.."]


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "objects", "http://test", "secret")


@pytest.mark.parametrize("key", ESCAPING_KEYS)
def test_a_key_that_climbs_out_of_the_folder_is_refused_by_every_operation(store, key):
    calls = [
        lambda: store.put(key, b"x", "image/png"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.head(key),
    ]
    for call in calls:
        with pytest.raises(StorageError, match="escapes the storage root"):
            call()
    assert not (store.root.parent / "outside").exists()


def test_objects_round_trip_under_a_root_reached_through_a_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    store = LocalStorage(tmp_path / "link", "http://test", "secret")
    store.put("outputs/t/j/0.png", b"png", "image/png", metadata={"job-id": "j"})
    assert store.get("outputs/t/j/0.png") == b"png"
    assert store.exists("outputs/t/j/../j/0.png")  # ".." inside the folder stays inside
    assert store.head("outputs/t/j/0.png")["metadata"] == {"job-id": "j"}
    assert (real / "outputs/t/j/0.png").read_bytes() == b"png"
    store.delete("outputs/t/j/0.png")
    assert not store.exists("outputs/t/j/0.png")
