"""Read config.toml once into frozen dataclasses; fail fast with the full key path.

Every other module receives these objects; none reads the file again (shared/STYLE.md, 5).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import ConfigError

DUPLICATE_POLICIES = ("ignore", "overwrite", "reject")


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = "PACSNODE"
    data_dir: Path = Path("./data")


@dataclass(frozen=True)
class DicomSettings:
    host: str = "0.0.0.0"
    port: int = 11112
    max_associations: int = 16
    allowed_callers: tuple[str, ...] = ()
    duplicate_policy: str = "ignore"
    case_sensitive_names: bool = False
    max_find_results: int = 10000
    query_requires_known_caller: bool = False
    max_pdu_length: int = 262144
    network_timeout: float = 60.0


@dataclass(frozen=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_in_flight_per_user: int = 16
    rate_per_second: float = 200.0
    burst: int = 1000
    max_body_bytes: int = 1048576
    max_bulk_count: int = 500
    max_list_limit: int = 1000
    thumbnail_size: int = 128
    cors_origins: tuple[str, ...] = ()  # origins allowed to call the API from a browser (CORS)


@dataclass(frozen=True)
class DicomwebSettings:
    """DICOMweb (PS3.18) under ``root``: QIDO-RS, WADO-RS, STOW-RS and WADO-URI."""

    root: str = "/dicom-web"
    anonymous_read: bool = False  # reads without a bearer token (STOW always needs one)
    max_stow_bytes: int = 2147483648  # one STOW-RS request body, streamed to disk
    max_results: int = 10000  # QIDO-RS answers at most this many matches a request


@dataclass(frozen=True)
class AuthSettings:
    secret: str = ""  # empty: generated once into data_dir/jwt-secret (0600)
    issuer: str = "pacsnode"
    audience: str = "pacsnode-api"
    access_token_minutes: int = 15
    refresh_token_days: int = 7
    max_failed_logins: int = 5
    failed_login_window_seconds: int = 300


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""


@dataclass(frozen=True)
class RemoteSettings:
    host: str
    port: int


@dataclass(frozen=True)
class ForwardRule:
    """One ``[[forward]]`` rule: send each newly stored instance that matches to ``to``.

    ``modality`` and ``calling_ae`` narrow the rule (both must match when both are given);
    a rule with neither forwards everything stored.
    """

    to: str  # a remote under [remotes]
    modality: str | None = None  # the instance's series Modality, e.g. "CT"
    calling_ae: str | None = None  # the AE title that sent it to this node

    def matches(self, modality: str | None, calling_ae: str | None) -> bool:
        return ((self.modality is None or self.modality == (modality or "").strip())
                and (self.calling_ae is None or self.calling_ae == (calling_ae or "").strip()))


RETRIEVE_METHODS = ("move", "get")


@dataclass(frozen=True)
class RetrieveSettings:
    """Bulk retrieval jobs (scu.retrieve): how, how many associations, how many tries."""

    method: str = "move"  # C-MOVE to this node's own AE, or C-GET
    max_associations: int = 3  # concurrent associations per node, 1 to 5
    max_attempts: int = 5  # per series, and for the C-FIND planning
    retry_delay: float = 2.0  # seconds before the 2nd attempt; doubles, with jitter
    max_retry_delay: float = 300.0


@dataclass(frozen=True)
class UploadSettings:
    """Upload sessions over HTTP (web.uploads): caps, how long an unfinished upload is kept."""

    max_size: int = 4294967296  # bytes of one uploaded file (advertised as Tus-Max-Size)
    max_chunk_bytes: int = 16777216  # bytes of one PATCH body; a larger one is refused (413)
    expire_after_seconds: int = 86400  # an unfinished upload idle this long is EXPIRED, its bytes freed
    max_retries: int = 5  # POST .../retry on a FAILED session, at most this many times
    sweep_interval_seconds: float = 60.0  # how often the serving node looks for abandoned uploads


@dataclass(frozen=True)
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    dicom: DicomSettings = field(default_factory=DicomSettings)
    web: WebSettings = field(default_factory=WebSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    remotes: dict[str, RemoteSettings] = field(default_factory=dict)
    uploads: UploadSettings = field(default_factory=UploadSettings)
    retrieve: RetrieveSettings = field(default_factory=RetrieveSettings)
    dicomweb: DicomwebSettings = field(default_factory=DicomwebSettings)
    forward: tuple[ForwardRule, ...] = ()  # [[forward]] rules, in file order
    source: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir


def load_settings(path: str | Path) -> Settings:
    """Load and check a config file; relative paths resolve against its folder."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return settings_from_mapping(raw, base_dir=path.resolve().parent, source=path.resolve())


def settings_from_mapping(
    raw: dict[str, Any], base_dir: Path, source: Path | None = None
) -> Settings:
    """Build Settings from a parsed TOML mapping (tests build configs this way too)."""
    known = {f.name for f in dataclasses.fields(Settings)} - {"source"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{key}: unknown section (known: {', '.join(sorted(known))})")
    sections: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if f.name in ("source", "remotes", "forward"):
            continue
        sections[f.name] = _build(_hint(Settings, f.name), raw.get(f.name, {}), f.name, base_dir)
    remotes_raw = raw.get("remotes", {})
    if not isinstance(remotes_raw, dict):
        raise ConfigError("remotes: expected a table of [remotes.AE_TITLE] tables")
    remotes = {}
    for ae_title, table in remotes_raw.items():
        _check_ae_title(ae_title, f"remotes.{ae_title}")
        remotes[ae_title] = _build(RemoteSettings, table, f"remotes.{ae_title}", base_dir)
    forward = _forward_rules(raw.get("forward", []), remotes, base_dir)
    settings = Settings(**sections, remotes=remotes, forward=forward, source=source)
    _check_values(settings)
    url = _resolve_sqlite_url(settings.database.url, base_dir)
    if url != settings.database.url:
        settings = dataclasses.replace(settings, database=DatabaseSettings(url=url))
    return settings


def _forward_rules(raw: Any, remotes: dict[str, RemoteSettings],
                   base_dir: Path) -> tuple[ForwardRule, ...]:
    """``[[forward]]`` tables: each ``to`` must name a remote, so a typo fails at start-up
    instead of queueing instances for a destination that can never be reached."""
    if not isinstance(raw, list):
        raise ConfigError("forward: expected [[forward]] tables (an array of tables)")
    rules = []
    for i, table in enumerate(raw):
        where = f"forward[{i}]"
        rule = _build(ForwardRule, table, where, base_dir)
        if rule.to.strip() not in remotes:
            known = ", ".join(sorted(remotes)) or "none"
            raise ConfigError(f"{where}.to: {rule.to!r} is not under [remotes] (known: {known})")
        if rule.modality is not None and not rule.modality.strip():
            raise ConfigError(f"{where}.modality: expected a modality such as \"CT\", got ''")
        if rule.calling_ae is not None:
            _check_ae_title(rule.calling_ae, f"{where}.calling_ae")
        rules.append(ForwardRule(rule.to.strip(), rule.modality.strip() if rule.modality else None,
                                 rule.calling_ae.strip() if rule.calling_ae else None))
    return tuple(rules)


def _resolve_sqlite_url(url: str, base_dir: Path) -> str:
    """``sqlite:///relative/file`` is relative to the config file's folder, like every path
    (``sqlite:////absolute/file`` stays as it is)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    if not url[len(prefix):]:
        raise ConfigError(f"database.url: expected a file after sqlite:///, got {url!r}")
    path = Path(url[len(prefix):]).expanduser()
    return prefix + str(path if path.is_absolute() else (base_dir / path).resolve())


def _hint(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _build(cls: type, table: Any, where: str, base_dir: Path) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key_path = f"{where}.{name}"
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key_path}: missing value")
            continue
        values[name] = _convert(hints[name], table[name], key_path, base_dir)
    return cls(**values)


def _convert(hint: Any, value: Any, key_path: str, base_dir: Path) -> Any:
    origin = typing.get_origin(hint)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key_path}: expected a path string, got {value!r}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base_dir / path).resolve()
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key_path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key_path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key_path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key_path}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise ConfigError(f"{key_path}: expected a list, got {value!r}")
        return tuple(_convert(item, v, f"{key_path}[{i}]", base_dir) for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(args[0], value, key_path, base_dir)
    raise ConfigError(f"{key_path}: unsupported setting type {hint}")  # pragma: no cover


def _check_ae_title(value: str, key_path: str) -> None:
    if not value or len(value) > 16 or not value.isascii() or "\\" in value or not value.strip():
        raise ConfigError(f"{key_path}: not a valid AE title (1-16 ASCII characters): {value!r}")


def _check_port(value: int, key_path: str) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{key_path}: expected a port 0-65535, got {value}")


def _check_values(s: Settings) -> None:
    _check_ae_title(s.node.ae_title, "node.ae_title")
    _check_port(s.dicom.port, "dicom.port")
    _check_port(s.web.port, "web.port")
    _check_web_auth(s)
    _check_uploads(s.uploads)
    _check_dicomweb(s.dicomweb)
    for name, remote in s.remotes.items():
        _check_port(remote.port, f"remotes.{name}.port")
    for i, caller in enumerate(s.dicom.allowed_callers):
        _check_ae_title(caller, f"dicom.allowed_callers[{i}]")
    if s.dicom.max_associations < 1:
        raise ConfigError("dicom.max_associations: expected at least 1")
    if s.retrieve.method not in RETRIEVE_METHODS:
        raise ConfigError(f"retrieve.method: expected one of {', '.join(RETRIEVE_METHODS)}, "
                          f"got {s.retrieve.method!r}")
    if not 1 <= s.retrieve.max_associations <= 5:
        raise ConfigError("retrieve.max_associations: expected 1 to 5 (remote archives limit "
                          f"associations per caller), got {s.retrieve.max_associations}")
    if s.retrieve.max_attempts < 1:
        raise ConfigError("retrieve.max_attempts: expected at least 1")
    if s.retrieve.retry_delay < 0 or s.retrieve.max_retry_delay < s.retrieve.retry_delay:
        raise ConfigError("retrieve.retry_delay: expected 0 <= retry_delay <= max_retry_delay")
    if s.dicom.max_find_results < 1:
        raise ConfigError("dicom.max_find_results: expected at least 1")
    if s.dicom.duplicate_policy not in DUPLICATE_POLICIES:
        raise ConfigError(
            f"dicom.duplicate_policy: expected one of {', '.join(DUPLICATE_POLICIES)}, "
            f"got {s.dicom.duplicate_policy!r}"
        )
    url = s.database.url
    if url and not url.startswith(("postgresql://", "postgres://", "sqlite:///")):
        raise ConfigError(f"database.url: expected empty, postgresql://... or sqlite:///..., got {url!r}")


def _check_dicomweb(d: DicomwebSettings) -> None:
    root = d.root.rstrip("/")
    if not d.root.startswith("/") or not root or root.split("/")[1] in ("api", "healthz", "metrics") \
            or not all(c.isalnum() or c in "/-_." for c in root):
        raise ConfigError(f"dicomweb.root: expected a path such as '/dicom-web' (letters, digits, "
                          f"'-', '_', '.'; not under /api), got {d.root!r}")
    if d.max_stow_bytes < 1 or d.max_results < 1:
        raise ConfigError("dicomweb.max_stow_bytes and dicomweb.max_results: expected at least 1")


def _check_uploads(u: UploadSettings) -> None:
    for f in dataclasses.fields(u):
        if getattr(u, f.name) <= 0:
            raise ConfigError(f"uploads.{f.name}: expected a positive number, got {getattr(u, f.name)}")


def _check_web_auth(s: Settings) -> None:
    """Limits and lifetimes must be positive; a configured secret must be long enough for HS256."""
    for section, values in (("web", s.web), ("auth", s.auth)):
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and f.name != "port" \
                    and value <= 0:
                raise ConfigError(f"{section}.{f.name}: expected a positive number, got {value}")
    if s.auth.secret and len(s.auth.secret) < 32:
        raise ConfigError("auth.secret: expected at least 32 characters (or empty to generate one)")
