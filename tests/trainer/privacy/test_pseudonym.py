"""Keyed pseudonyms: stable per key, different across keys, secrets never printed."""

from __future__ import annotations

import pytest

from trainer.privacy.pseudonym import (
    ENV_KEYS,
    ENV_KEYS_FILE,
    from_environment,
    is_pseudonym,
    parse_keys,
)


def test_pseudonyms_are_keyed_stable_and_carry_the_key_id() -> None:
    a = parse_keys("k1:0123456789abcdef-secret", "test")
    b = parse_keys("k1:another-secret-entirely!", "test")
    p = a.pseudonym("alice")
    assert p == a.pseudonym("alice") and p.startswith("k1.") and is_pseudonym(p)
    assert p != a.pseudonym("bob") and p != b.pseudonym("alice")  # the key matters
    assert "alice" not in p and a.pseudonym("") == "" and a.candidates("") == ()


def test_rotation_gives_current_then_previous() -> None:
    old = parse_keys("k1:0123456789abcdef-secret", "test")
    rotated = parse_keys("k2:fedcba9876543210-secret\nk1:0123456789abcdef-secret", "test")
    current, previous = rotated.candidates("alice")
    assert previous == old.pseudonym("alice") and current.startswith("k2.")
    assert rotated.key_id == "k2"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "got 0"),
        ("a:0123456789abcdef,b:0123456789abcdef,c:0123456789abcdef", "got 3"),
        ("no-colon-here", "KEY_ID:SECRET"),
        ("k1:short", "at least 16"),
        ("bad id!:0123456789abcdef", "must be 1-32"),
        ("k1:0123456789abcdef,k1:0123456789abcdeX", "share the id"),
    ],
)
def test_bad_keys_are_refused_without_echoing_secrets(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        parse_keys(text, "keys.txt")
    assert "0123456789abcdef" not in str(error.value)


def test_keys_come_from_a_file_or_the_environment(tmp_path) -> None:
    path = tmp_path / "keys"
    path.write_text("# rotated 2026-12\nk2:fedcba9876543210-secret\n")
    assert from_environment({ENV_KEYS_FILE: str(path)}).key_id == "k2"
    assert from_environment({ENV_KEYS: "k3:fedcba9876543210-secret"}).key_id == "k3"
    assert from_environment({}) is None
    assert "secret" not in repr(from_environment({}, keys_file=path).current)
