"""The daemon's configuration: /etc/wkd/wkd.toml -> frozen `Config`.

Reading the file is the only I/O here; `parse_config` does the rest on values. Each setting
is parsed by a small pure function, and anything unknown (section or key) is refused with
`wkd.errors.InvalidConfig` naming file, section and key: a misspelt setting that were
silently ignored would leave the daemon running with a default the administrator did not
choose.

    [daemon]
    state_dir = "/var/lib/wkd"      # embedded SoftHSM2 token and its PIN live here
    allow_image_files = false       # tests/benchmarks may format regular image files
    allow_passphrase_in_message = false  # accept Format's recovery-passphrase (ay) on the bus
    [hsm]
    module = ""                     # PKCS#11 module path; empty -> embedded SoftHSM2 token
    token_label = ""                # required when module is set
    pin_file = ""                   # PIN file (0600, root) when no systemd credential "wkd-pin"
    default_kek = "wkd-default"
    [volumes]
    cipher = "aes-xts-plain64"
    key_bits = 512                  # 256 (AES-128-XTS) or 512 (AES-256-XTS)
    recovery_pbkdf = "argon2id"     # KDF of the optional recovery passphrase keyslot
    recovery_pbkdf_ms = 2000        # its benchmarked cost per open, as cryptsetup's default
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeVar

from wkd.errors import InvalidConfig, InvalidName
from wkd.values import KeySize, validate_kek_label

DEFAULT_PATH: Final = "/etc/wkd/wkd.toml"
# A configuration file is a few hundred bytes; refuse to read something absurd.
MAX_CONFIG_BYTES: Final = 1 << 20
# CK_TOKEN_INFO.label is 32 bytes, blank padded (PKCS#11 v2.40 §3.2).
TOKEN_LABEL_MAX_BYTES: Final = 32
# XTS splits its key in two (IEEE 1619): 512 bits is AES-256-XTS, 256 bits AES-128-XTS.
ALLOWED_CIPHERS: Final = ("aes-xts-plain64",)
ALLOWED_KEY_BITS: Final = tuple(int(k) for k in KeySize)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    state_dir: str = "/var/lib/wkd"
    allow_image_files: bool = False
    # Format's `recovery-passphrase` (ay) puts the passphrase in the message itself, where
    # bus captures and dbus-daemon's memory keep it; refused unless enabled here. The
    # descriptor route (`recovery-passphrase-fd`) is always accepted.
    allow_passphrase_in_message: bool = False


@dataclass(frozen=True, slots=True)
class HsmConfig:
    module: str = ""
    token_label: str = ""
    # Empty: the systemd credential "wkd-pin" (or, for the embedded token, its own PIN file
    # in state_dir). The daemon decides; this module only checks the path's form.
    pin_file: str = ""
    default_kek: str = "wkd-default"


@dataclass(frozen=True, slots=True)
class VolumeDefaults:
    cipher: str = "aes-xts-plain64"
    key_bits: int = 512
    # The recovery keyslot guards the key with a human passphrase, so unlike the digest it
    # needs a real work factor: cryptsetup's own defaults (argon2id, benchmarked to 2 s).
    recovery_pbkdf: str = "argon2id"
    recovery_pbkdf_ms: int = 2000

    @property
    def key_bytes(self) -> int:
        return self.key_bits // 8


@dataclass(frozen=True, slots=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    hsm: HsmConfig = field(default_factory=HsmConfig)
    volumes: VolumeDefaults = field(default_factory=VolumeDefaults)
    source: str | None = None  # the file it was read from; None for built-in defaults

    @property
    def embedded(self) -> bool:
        """True when wkd runs its own SoftHSM2 token in state_dir (no module configured)."""
        return self.hsm.module == ""


class _SettingError(Exception):
    """A parser's complaint about one value; turned into InvalidConfig with its location."""


# --- one small pure parser per kind of setting ------------------------------------------


def _type_name(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", dict: "table",
            list: "array"}.get(type(value), type(value).__name__)


def parse_bool(value: object) -> bool:
    if type(value) is not bool:
        raise _SettingError(f"must be a boolean (got {_type_name(value)})")
    return value


def parse_str(value: object) -> str:
    if not isinstance(value, str):
        raise _SettingError(f"must be a string (got {_type_name(value)})")
    if "\0" in value:
        raise _SettingError("must not contain a NUL character")
    return value


def parse_abs_path(value: object) -> str:
    text = parse_str(value)
    if not os.path.isabs(text):
        raise _SettingError("must be an absolute path")
    return os.path.normpath(text)


def parse_optional_abs_path(value: object) -> str:
    """An absolute path, or "" for "not set"."""
    text = parse_str(value)
    return "" if text == "" else parse_abs_path(text)


def parse_token_label(value: object) -> str:
    text = parse_str(value)
    if len(text.encode("utf-8")) > TOKEN_LABEL_MAX_BYTES:
        raise _SettingError(
            f"must be at most {TOKEN_LABEL_MAX_BYTES} bytes (PKCS#11 token labels are that long)"
        )
    return text


def parse_kek_label(value: object) -> str:
    text = parse_str(value)
    try:
        return validate_kek_label(text)
    except InvalidName as exc:
        raise _SettingError(exc.message) from None


def parse_cipher(value: object) -> str:
    text = parse_str(value)
    if text not in ALLOWED_CIPHERS:
        raise _SettingError(f"must be one of {', '.join(ALLOWED_CIPHERS)}")
    return text


def parse_key_bits(value: object) -> int:
    if type(value) is not int:  # bool is an int subclass; `true` is not 1 here
        raise _SettingError(f"must be an integer (got {_type_name(value)})")
    if value not in ALLOWED_KEY_BITS:
        raise _SettingError(f"must be one of {', '.join(map(str, ALLOWED_KEY_BITS))}")
    return value


ALLOWED_RECOVERY_PBKDFS: Final = ("argon2id", "argon2i", "pbkdf2")


def parse_recovery_pbkdf(value: object) -> str:
    text = parse_str(value)
    if text not in ALLOWED_RECOVERY_PBKDFS:
        raise _SettingError(f"must be one of {', '.join(ALLOWED_RECOVERY_PBKDFS)}")
    return text


def parse_pbkdf_ms(value: object) -> int:
    if type(value) is not int:
        raise _SettingError(f"must be an integer (got {_type_name(value)})")
    # Below 10 ms a passphrase keyslot is no obstacle; above a minute every open stalls.
    if not 10 <= value <= 60000:
        raise _SettingError("must be between 10 and 60000 (milliseconds)")
    return value


# --- assembling sections ----------------------------------------------------------------

_SECTIONS: Final[dict[str, frozenset[str]]] = {
    "daemon": frozenset({"state_dir", "allow_image_files", "allow_passphrase_in_message"}),
    "hsm": frozenset({"module", "token_label", "pin_file", "default_kek"}),
    "volumes": frozenset({"cipher", "key_bits", "recovery_pbkdf", "recovery_pbkdf_ms"}),
}


class _Section:
    """One section's raw values plus where each came from, for error messages."""

    def __init__(self, name: str, values: dict[str, object], origins: dict[str, str]) -> None:
        self.name = name
        self.values = values
        self.origins = origins

    def error(self, key: str, problem: str) -> InvalidConfig:
        return InvalidConfig(f"{self.origins[key]}: [{self.name}] {key}: {problem}")

    def get(self, key: str, parse: Callable[[object], _T], default: _T) -> _T:
        if key not in self.values:
            return default
        try:
            return parse(self.values[key])
        except _SettingError as exc:
            raise self.error(key, str(exc)) from None


def _collect(
    document: Mapping[str, object], source: str, overrides: Mapping[str, object] | None
) -> dict[str, _Section]:
    sections = {name: _Section(name, {}, {}) for name in _SECTIONS}

    def put(origin: str, section: str, key: str, value: object) -> None:
        if section not in _SECTIONS:
            raise InvalidConfig(f"{origin}: unknown section [{section}]")
        if key not in _SECTIONS[section]:
            raise InvalidConfig(f"{origin}: [{section}] unknown key {key!r}")
        sections[section].values[key] = value
        sections[section].origins[key] = origin

    def put_table(origin: str, name: str, table: object) -> None:
        if name not in _SECTIONS:
            raise InvalidConfig(f"{origin}: unknown section [{name}]")
        if not isinstance(table, dict):
            raise InvalidConfig(f"{origin}: {name!r} must be a section (table)")
        for key, value in table.items():
            put(origin, name, key, value)

    for name, table in document.items():
        put_table(source, name, table)
    for name, value in (overrides or {}).items():
        # Overrides are nested like the file ({"daemon": {"state_dir": ...}}) or dotted
        # ({"daemon.state_dir": ...}).
        if "." in name:
            section, key = name.split(".", 1)
            put("override", section, key, value)
        else:
            put_table("override", name, value)
    return sections


def parse_config(
    document: Mapping[str, object],
    *,
    source: str | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Build a Config from a decoded TOML document (pure). `source` names the file in error
    messages; None means built-in defaults."""
    origin_name = source if source is not None else "<defaults>"
    sections = _collect(document, origin_name, overrides)
    daemon_raw, hsm_raw, vol_raw = sections["daemon"], sections["hsm"], sections["volumes"]
    d_daemon, d_hsm, d_vol = DaemonConfig(), HsmConfig(), VolumeDefaults()
    daemon = DaemonConfig(
        state_dir=daemon_raw.get("state_dir", parse_abs_path, d_daemon.state_dir),
        allow_image_files=daemon_raw.get(
            "allow_image_files", parse_bool, d_daemon.allow_image_files
        ),
        allow_passphrase_in_message=daemon_raw.get(
            "allow_passphrase_in_message", parse_bool, d_daemon.allow_passphrase_in_message
        ),
    )
    hsm = HsmConfig(
        module=hsm_raw.get("module", parse_optional_abs_path, d_hsm.module),
        token_label=hsm_raw.get("token_label", parse_token_label, d_hsm.token_label),
        pin_file=hsm_raw.get("pin_file", parse_optional_abs_path, d_hsm.pin_file),
        default_kek=hsm_raw.get("default_kek", parse_kek_label, d_hsm.default_kek),
    )
    # Cross-field rules.
    if hsm.module and not hsm.token_label:
        origin = hsm_raw.origins.get("module", origin_name)
        raise InvalidConfig(
            f"{origin}: [hsm] token_label: is required when [hsm] module is set"
        )
    if not hsm.module and hsm.token_label:
        # The embedded token's label is wkd's own choice; a label here would be ignored.
        raise hsm_raw.error("token_label", "is only used together with [hsm] module")
    volumes = VolumeDefaults(
        cipher=vol_raw.get("cipher", parse_cipher, d_vol.cipher),
        key_bits=vol_raw.get("key_bits", parse_key_bits, d_vol.key_bits),
        recovery_pbkdf=vol_raw.get("recovery_pbkdf", parse_recovery_pbkdf,
                                   d_vol.recovery_pbkdf),
        recovery_pbkdf_ms=vol_raw.get("recovery_pbkdf_ms", parse_pbkdf_ms,
                                      d_vol.recovery_pbkdf_ms),
    )
    return Config(daemon=daemon, hsm=hsm, volumes=volumes, source=source)


def load_config(
    path: str | None = None, *, overrides: Mapping[str, object] | None = None
) -> Config:
    """Read the configuration. With `path` None the default file is used if it exists, else
    built-in defaults; an explicitly given path must exist."""
    explicit = path is not None
    file_path = path if path is not None else DEFAULT_PATH
    try:
        with open(file_path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        if explicit:
            raise InvalidConfig(f"{file_path}: configuration file not found") from None
        return parse_config({}, source=None, overrides=overrides)
    except OSError as exc:
        raise InvalidConfig(f"{file_path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidConfig(f"{file_path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidConfig(f"{file_path}: not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message gives the line and column, not the file's content.
        raise InvalidConfig(f"{file_path}: invalid TOML: {exc}") from None
    return parse_config(document, source=file_path, overrides=overrides)
