"""wkd.config: defaults, a full file, and one InvalidConfig per wrong type or unknown key."""

from __future__ import annotations

import os

import pytest

import wkd.config as config_mod
from wkd.config import Config, load_config, parse_config
from wkd.errors import InvalidConfig

FULL = """
[daemon]
state_dir = "/srv/wkd/"
allow_image_files = true

[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "prod-hsm"
pin_file = "/etc/wkd/pin"
default_kek = "kek-2026"

[volumes]
cipher = "aes-xts-plain64"
key_bits = 256
"""


def write(tmp_path, text, name="wkd.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_when_default_file_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(config_mod, "DEFAULT_PATH", str(tmp_path / "absent.toml"))
    config = load_config(None)
    assert config == Config()
    assert config.source is None
    assert config.daemon.state_dir == "/var/lib/wkd"
    assert config.daemon.allow_image_files is False
    # The recovery passphrase in a bus message (ay) is refused unless enabled (issue 11).
    assert config.daemon.allow_passphrase_in_message is False
    assert config.hsm.module == ""
    assert config.hsm.token_label == ""
    assert config.hsm.pin_file == ""
    assert config.hsm.default_kek == "wkd-default"
    assert config.volumes.cipher == "aes-xts-plain64"
    assert config.volumes.key_bits == 512
    assert config.volumes.key_bytes == 64
    assert config.embedded is True


def test_default_path_is_read_when_present(monkeypatch, tmp_path):
    path = write(tmp_path, '[hsm]\ndefault_kek = "other"\n')
    monkeypatch.setattr(config_mod, "DEFAULT_PATH", path)
    config = load_config(None)
    assert config.hsm.default_kek == "other"
    assert config.source == path


def test_full_file(tmp_path):
    path = write(tmp_path, FULL)
    config = load_config(path)
    assert config.source == path
    assert config.daemon.state_dir == "/srv/wkd"  # normalized
    assert config.daemon.allow_image_files is True
    assert config.hsm.module == "/usr/lib/softhsm/libsofthsm2.so"
    assert config.hsm.token_label == "prod-hsm"
    assert config.hsm.pin_file == "/etc/wkd/pin"
    assert config.hsm.default_kek == "kek-2026"
    assert config.volumes.key_bits == 256
    assert config.volumes.key_bytes == 32
    assert config.embedded is False


def test_empty_file_gives_defaults(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.daemon == Config().daemon
    assert config.hsm == Config().hsm
    assert config.volumes == Config().volumes


def test_config_is_frozen():
    config = Config()
    with pytest.raises(AttributeError):
        config.hsm.module = "/x"  # type: ignore[misc]


def test_missing_explicit_file(tmp_path):
    path = str(tmp_path / "nope.toml")
    with pytest.raises(InvalidConfig) as info:
        load_config(path)
    assert path in info.value.message
    assert "not found" in info.value.message


def test_unreadable_path_is_invalid_config(tmp_path):
    # A directory cannot be read as a file: OSError (EISDIR) -> InvalidConfig.
    with pytest.raises(InvalidConfig) as info:
        load_config(str(tmp_path))
    assert str(tmp_path) in info.value.message


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "[daemon\nstate_dir = 1\n")
    with pytest.raises(InvalidConfig) as info:
        load_config(path)
    assert path in info.value.message
    assert "invalid TOML" in info.value.message


def test_invalid_utf8(tmp_path):
    path = tmp_path / "wkd.toml"
    path.write_bytes(b'[hsm]\ndefault_kek = "\xff"\n')
    with pytest.raises(InvalidConfig) as info:
        load_config(str(path))
    assert "UTF-8" in info.value.message


@pytest.mark.parametrize(
    ("text", "section", "key", "problem"),
    [
        ("[daemon]\nstate_dir = 5", "daemon", "state_dir", "must be a string"),
        ('[daemon]\nstate_dir = "var/lib/wkd"', "daemon", "state_dir", "absolute path"),
        ('[daemon]\nstate_dir = ""', "daemon", "state_dir", "absolute path"),
        ('[daemon]\nstate_dir = "/a\\u0000b"', "daemon", "state_dir", "NUL"),
        ('[daemon]\nallow_image_files = "yes"', "daemon", "allow_image_files", "boolean"),
        ("[daemon]\nallow_image_files = 1", "daemon", "allow_image_files", "boolean"),
        ('[daemon]\nallow_passphrase_in_message = "true"', "daemon",
         "allow_passphrase_in_message", "boolean"),
        ("[hsm]\nmodule = false", "hsm", "module", "must be a string"),
        ('[hsm]\nmodule = "libsofthsm2.so"\ntoken_label = "t"', "hsm", "module", "absolute"),
        ("[hsm]\ntoken_label = []", "hsm", "token_label", "must be a string"),
        (
            '[hsm]\nmodule = "/m.so"\ntoken_label = "' + "x" * 33 + '"',
            "hsm",
            "token_label",
            "32 bytes",
        ),
        ('[hsm]\nmodule = "/m.so"', "hsm", "token_label", "required"),
        ('[hsm]\ntoken_label = "t"', "hsm", "token_label", "only used together"),
        ('[hsm]\npin_file = "pin"', "hsm", "pin_file", "absolute path"),
        ("[hsm]\npin_file = 0o600", "hsm", "pin_file", "must be a string"),
        ('[hsm]\ndefault_kek = "-bad"', "hsm", "default_kek", "start with"),
        ('[hsm]\ndefault_kek = ""', "hsm", "default_kek", "1..64"),
        ("[hsm]\ndefault_kek = 3", "hsm", "default_kek", "must be a string"),
        ('[volumes]\ncipher = "aes-cbc-essiv:sha256"', "volumes", "cipher", "aes-xts-plain64"),
        ("[volumes]\ncipher = 1", "volumes", "cipher", "must be a string"),
        ("[volumes]\nkey_bits = 384", "volumes", "key_bits", "256, 512"),
        ("[volumes]\nkey_bits = true", "volumes", "key_bits", "integer"),
        ("[volumes]\nkey_bits = 512.0", "volumes", "key_bits", "integer"),
        ('[volumes]\nkey_bits = "512"', "volumes", "key_bits", "integer"),
    ],
)
def test_bad_value_names_file_section_key(tmp_path, text, section, key, problem):
    path = write(tmp_path, text)
    with pytest.raises(InvalidConfig) as info:
        load_config(path)
    message = info.value.message
    assert message.startswith(path + ": ")
    assert f"[{section}] {key}" in message
    assert problem in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[daemon]\nstatedir = '/x'", "[daemon] unknown key 'statedir'"),
        ("[hsm]\npin = '1234'", "[hsm] unknown key 'pin'"),
        ("[volumes]\nkey_size = 512", "[volumes] unknown key 'key_size'"),
        ("[daemon.extra]\nx = 1", "[daemon] unknown key 'extra'"),
        ("[tpm]\ndevice = '/dev/tpm0'", "unknown section [tpm]"),
        ("state_dir = '/x'", "unknown section [state_dir]"),
        ("[[daemon]]\nstate_dir = '/x'", "'daemon' must be a section"),
    ],
)
def test_unknown_section_or_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(InvalidConfig) as info:
        load_config(path)
    assert info.value.message.startswith(path + ": ")
    assert expected in info.value.message


def test_overrides_nested_and_dotted(tmp_path):
    path = write(tmp_path, FULL)
    config = load_config(
        path,
        overrides={"daemon": {"state_dir": str(tmp_path)}, "volumes.key_bits": 512},
    )
    assert config.daemon.state_dir == os.path.normpath(str(tmp_path))
    assert config.volumes.key_bits == 512
    assert config.hsm.token_label == "prod-hsm"  # untouched by the override


def test_overrides_apply_to_defaults(monkeypatch, tmp_path):
    monkeypatch.setattr(config_mod, "DEFAULT_PATH", str(tmp_path / "absent.toml"))
    config = load_config(None, overrides={"daemon": {"allow_image_files": True}})
    assert config.daemon.allow_image_files is True


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"daemon": {"nope": 1}}, "override: [daemon] unknown key 'nope'"),
        ({"nope.x": 1}, "override: unknown section [nope]"),
        ({"volumes.key_bits": "big"}, "override: [volumes] key_bits: must be an integer"),
    ],
)
def test_bad_overrides(overrides, expected):
    with pytest.raises(InvalidConfig) as info:
        parse_config({}, overrides=overrides)
    assert expected in info.value.message


def test_parse_config_is_pure_and_names_source():
    with pytest.raises(InvalidConfig) as info:
        parse_config({"daemon": {"state_dir": 1}}, source="/etc/wkd/wkd.toml")
    assert info.value.message == (
        "/etc/wkd/wkd.toml: [daemon] state_dir: must be a string (got integer)"
    )


def test_recovery_kdf_settings() -> None:
    from wkd.config import parse_config

    cfg = parse_config({})
    assert (cfg.volumes.recovery_pbkdf, cfg.volumes.recovery_pbkdf_ms) == ("argon2id", 2000)
    cfg = parse_config({"volumes": {"recovery_pbkdf": "pbkdf2", "recovery_pbkdf_ms": 50}})
    assert (cfg.volumes.recovery_pbkdf, cfg.volumes.recovery_pbkdf_ms) == ("pbkdf2", 50)
    for bad in ({"recovery_pbkdf": "md5"}, {"recovery_pbkdf_ms": 1},
                {"recovery_pbkdf_ms": True}, {"recovery_pbkdf_ms": "2000"}):
        with pytest.raises(InvalidConfig, match="recovery_pbkdf"):
            parse_config({"volumes": bad})


def test_passphrase_in_message_can_be_enabled(tmp_path):
    path = write(tmp_path, "[daemon]\nallow_passphrase_in_message = true\n")
    assert load_config(path).daemon.allow_passphrase_in_message is True
