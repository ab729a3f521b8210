"""The proxy and origin options: parsed once at start-up, errors named by option."""

from __future__ import annotations

import argparse

import pytest

from geows.config import Config, ConfigError, add_arguments, read_ini


def parse(*argv: str) -> Config:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["app.py", *argv])
    args.app = args.app_positional
    return Config.from_sources(args)


def test_nothing_trusted_and_no_origin_check_by_default() -> None:
    config = Config(app="app.py")
    config.validate()
    assert config.trusted() is None
    assert config.origin_policy() is None
    assert config.forwarded_header == "x-forwarded-for"
    assert config.websockets_allow_missing_origin is False


def test_trusted_proxies_from_repeats_and_commas() -> None:
    config = parse("--trusted-proxies", "10.0.0.0/8,unix", "--trusted-proxies", "::1")
    trusted = config.trusted()
    assert trusted is not None
    assert "10.1.2.3" in trusted
    assert "" in trusted  # a Unix socket peer
    assert "::1" in trusted
    assert "192.0.2.1" not in trusted


def test_an_empty_trusted_proxies_value_trusts_nobody() -> None:
    assert parse("--trusted-proxies", "").trusted() is None


def test_a_bad_trusted_proxy_is_a_config_error_naming_the_option() -> None:
    config = parse("--trusted-proxies", "loopback,10.0.0.300")
    with pytest.raises(ConfigError, match=r"^--trusted-proxies: .*'10\.0\.0\.300'"):
        config.validate()


def test_a_bad_allowed_origin_is_a_config_error_naming_the_option() -> None:
    config = parse("--websockets-allowed-origins", "https://example.com/path")
    with pytest.raises(ConfigError, match=r"^--websockets-allowed-origins: "):
        config.validate()


def test_allowed_origins_and_allow_missing_make_one_policy() -> None:
    config = parse(
        "--websockets-allowed-origins",
        "https://a.example,https://*.b.example",
        "--websockets-allow-missing-origin",
    )
    policy = config.origin_policy()
    assert policy is not None
    assert policy.allows("https://x.b.example")
    assert not policy.allows("https://evil.example")
    assert policy.allows(None)


@pytest.mark.parametrize("mode", ["x-forwarded-for", "forwarded", "auto"])
def test_forwarded_header_takes_three_values(mode: str) -> None:
    config = parse("--forwarded-header", mode)
    config.validate()
    assert config.forwarded_header == mode


def test_another_forwarded_header_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^--forwarded-header must be one of"):
        parse("--forwarded-header", "x-real-ip").validate()


def test_the_options_read_from_an_ini_file(tmp_path) -> None:
    ini = tmp_path / "app.ini"
    ini.write_text(
        "[uwsgi]\n"
        "trusted-proxies = loopback\n"
        "trusted-proxies = 10.0.0.0/8\n"
        "forwarded-header = auto\n"
        "websockets-allowed-origins = https://a.example\n"
        "websockets-allow-missing-origin = true\n",
        encoding="utf-8",
    )
    config = Config(app="app.py")
    config.update(read_ini(str(ini)))
    config.validate()
    trusted = config.trusted()
    assert trusted is not None
    assert "10.9.9.9" in trusted
    assert "127.0.0.1" in trusted
    assert config.forwarded_header == "auto"
    policy = config.origin_policy()
    assert policy is not None
    assert policy.allow_missing
