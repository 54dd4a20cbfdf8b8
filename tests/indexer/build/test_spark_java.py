"""--engine spark without a suitable Java: one line saying what to install."""

from __future__ import annotations

import pytest

from indexer.build.spark import check_java, java_major_version


def _fake_java(tmp_path, version_line: str):
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    return home


def test_old_java_is_named_with_the_fix(tmp_path, monkeypatch):
    home = _fake_java(tmp_path, 'openjdk version "11.0.22" 2024-01-16')
    monkeypatch.setenv("JAVA_HOME", str(home))
    with pytest.raises(ValueError) as info:
        check_java()
    assert "is Java 11" in str(info.value)
    assert "openjdk-17-jre-headless" in str(info.value) and "--engine local" in str(info.value)


def test_java_8_reads_as_8(tmp_path):
    home = _fake_java(tmp_path, 'java version "1.8.0_402"')
    assert java_major_version(str(home / "bin" / "java")) == 8


def test_no_java_at_all(tmp_path, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ValueError, match="no java on PATH"):
        check_java()


def test_java_home_without_java(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="has no bin/java"):
        check_java()


def test_java_17_passes(tmp_path, monkeypatch):
    home = _fake_java(tmp_path, 'openjdk version "17.0.15" 2025-04-15')
    monkeypatch.setenv("JAVA_HOME", str(home))
    check_java()
