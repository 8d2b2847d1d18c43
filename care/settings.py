"""Typed, frozen settings: config.yml for what is not secret, the environment for secrets.

`load_settings()` reads once at start-up. Any problem stops start-up with one `ConfigError` line
that names the file, the key (and line where known) and what is allowed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from care.errors import ConfigError

_log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config.yml"

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_hhmm(value: object) -> time:
    """Parse 'HH:MM' (24 hours) into a time; raise ValueError with the allowed form."""
    if isinstance(value, time):
        return value
    match = _HHMM.match(str(value))
    if not match:
        raise ValueError("must be a time written as HH:MM, for example 09:00")
    return time(int(match.group(1)), int(match.group(2)))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TimeWindow(_Frozen):
    """A daily window in local time; it may wrap past midnight (22:00-08:00)."""

    start: time
    end: time

    @field_validator("start", "end", mode="before")
    @classmethod
    def _parse(cls, value: object) -> time:
        return parse_hhmm(value)

    def contains(self, moment: time) -> bool:
        """True when `moment` falls inside the window (start inclusive, end exclusive)."""
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    @classmethod
    def parse(cls, text: str) -> TimeWindow:
        """'22:00-08:00' as a window; ValueError with the allowed form otherwise."""
        start, sep, end = text.partition("-")
        if not sep:
            raise ValueError("must look like 22:00-08:00")
        return cls(start=parse_hhmm(start.strip()), end=parse_hhmm(end.strip()))

    def ends_after(self, moment: datetime, zone: ZoneInfo) -> datetime | None:
        """When `moment` falls inside the window in `zone`'s local time, the moment the window
        ends (UTC); None when it falls outside."""
        local = moment.astimezone(zone)
        if not self.contains(local.time().replace(tzinfo=None)):
            return None
        day = local.date()
        if self.end <= local.time().replace(tzinfo=None):
            day += timedelta(days=1)  # the part before midnight of a window that wraps
        end = datetime.combine(day, self.end, tzinfo=zone)
        return end.astimezone(UTC)


class OfficeHours(TimeWindow):
    """The days and hours when workers are expected to answer."""

    days: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri")


class DatabaseSettings(_Frozen):
    """Where the data lives."""

    url: str = "sqlite:///var/aftercare.db"


class ReminderSettings(_Frozen):
    """Appointment reminders and check-in timing."""

    appointment_offsets_hours: tuple[float, ...] = (24.0, 2.0)
    quiet_hours: TimeWindow = TimeWindow(start=time(22, 0), end=time(8, 0))
    missed_checkins_alert_after: int = Field(default=3, ge=1, le=30)

    @field_validator("appointment_offsets_hours")
    @classmethod
    def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(v <= 0 or v > 24 * 14 for v in value):
            raise ValueError("must be a list of hours between 0 and 336, for example [24, 2]")
        return tuple(sorted(set(value), reverse=True))


class EscalationSettings(_Frozen):
    """How long a worker has to acknowledge an escalation, per severity."""

    acknowledge_within_minutes: dict[Literal["critical", "high", "normal", "low"], int] = {
        "critical": 5,
        "high": 15,
        "normal": 240,
        "low": 1440,
    }


class CodeSettings(_Frozen):
    """One-time codes for linking Telegram accounts."""

    valid_days: int = Field(default=7, ge=1, le=60)


class NluSettings(_Frozen):
    """Which NLU backend understands free text."""

    backend: Literal["embedded", "rasa"] = "embedded"
    confidence_threshold: float = Field(default=0.20, ge=0.0, le=1.0)
    rasa_url: str = "nl=http://127.0.0.1:5005,en=http://127.0.0.1:5006"
    rasa_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    cache_dir: Path = Path("var/nlu-cache")
    rasa_token: SecretStr | None = None


class WebhookSettings(_Frozen):
    """Webhook mode: where to listen and the public HTTPS address."""

    listen: str = "127.0.0.1"
    port: int = Field(default=8443, ge=1, le=65535)
    path: str = "telegram"
    public_url: str | None = None


class RateLimits(_Frozen):
    """Telegram's sending limits."""

    per_chat_per_second: float = Field(default=1.0, gt=0, le=30)
    overall_per_second: float = Field(default=30.0, gt=0, le=1000)


class TelegramSettings(_Frozen):
    """The Telegram channel."""

    mode: Literal["polling", "webhook"] = "polling"
    username: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9_]{3,31}$")
    base_url: str = "https://api.telegram.org/bot"
    webhook: WebhookSettings = WebhookSettings()
    rate_limits: RateLimits = RateLimits()
    token: SecretStr | None = None
    webhook_secret: SecretStr | None = None


class PrivacySettings(_Frozen):
    """Leave-no-trace defaults."""

    protect_content: bool = True
    auto_delete_hours: int | None = Field(default=None, ge=1, le=47)


class Settings(_Frozen):
    """Every setting of the application, loaded once."""

    config_path: Path = DEFAULT_CONFIG
    database: DatabaseSettings = DatabaseSettings()
    languages: tuple[str, ...] = ("nl", "en")
    default_language: str = "nl"
    timezone: str = "Europe/Amsterdam"
    office_hours: OfficeHours = OfficeHours(start=time(9, 0), end=time(17, 0))
    reminders: ReminderSettings = ReminderSettings()
    escalation: EscalationSettings = EscalationSettings()
    codes: CodeSettings = CodeSettings()
    nlu: NluSettings = NluSettings()
    telegram: TelegramSettings = TelegramSettings()
    privacy: PrivacySettings = PrivacySettings()
    keys_file: Path = Path("var/aftercare.keys")
    keys_inline: SecretStr | None = None

    @field_validator("languages")
    @classmethod
    def _languages(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        allowed = {"nl", "en"}
        if not value or any(lang not in allowed for lang in value):
            raise ValueError("must be a list drawn from: nl, en")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as Europe/Amsterdam") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        """The default time zone as a ZoneInfo."""
        return ZoneInfo(self.timezone)

    def quiet_until(
        self, hours: str | None, zone: str, now: datetime, *, who: int | None = None
    ) -> datetime | None:
        """When `now` falls in a girl's quiet hours (her own `hours`, such as '22:00-08:00',
        else the organisation's), the moment they end in her time zone; None otherwise. Her
        hours or zone unreadable (set by hand?): the organisation's hours in its own zone,
        and a warning with her id (`who`)."""
        try:
            window = TimeWindow.parse(hours) if hours else self.reminders.quiet_hours
            return window.ends_after(now, ZoneInfo(zone))
        except (ValueError, KeyError):
            _log.warning("quiet_hours.unreadable client=%s", who)
            return self.reminders.quiet_hours.ends_after(now, self.zone)

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the config are taken from."""
        return self.config_path.parent


_ENV_SECRETS: dict[str, tuple[str, ...]] = {
    "AFTERCARE_DATABASE_URL": ("database", "url"),
    "AFTERCARE_TELEGRAM_TOKEN": ("telegram", "token"),
    "AFTERCARE_TELEGRAM_BASE_URL": ("telegram", "base_url"),
    "AFTERCARE_WEBHOOK_SECRET": ("telegram", "webhook_secret"),
    "AFTERCARE_KEYS_FILE": ("keys_file",),
    "AFTERCARE_KEYS": ("keys_inline",),
    "AFTERCARE_RASA_URL": ("nlu", "rasa_url"),
    "AFTERCARE_RASA_TOKEN": ("nlu", "rasa_token"),
}
_SECRET_KEYS = {"telegram.token", "telegram.webhook_secret", "keys_inline", "nlu.rasa_token"}


def _read_yaml(path: Path) -> CommentedMap:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: the config file does not exist; copy config.yml or set AFTERCARE_CONFIG"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({type(exc).__name__})") from None
    if "\t" in text:
        line = text[: text.index("\t")].count("\n") + 1
        raise ConfigError(f"{path}:{line}: a tab is used for indentation; use spaces")
    try:
        data = YAML(typ="rt").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}{where}: {problem}; fix the YAML syntax") from None
    if data is None:
        return CommentedMap()
    if not isinstance(data, CommentedMap):
        raise ConfigError(f"{path}:1: the config must be a mapping of keys to values")
    return data


def _line_of(data: Any, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the deepest key of `loc` that exists in the YAML."""
    line: int | None = None
    node = data
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            pos = node.lc.key(part)
            line = pos[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            pos = node.lc.item(part)
            line = pos[0] + 1
            node = node[part]
        else:
            break
    return line


def _plain(node: Any) -> Any:
    if isinstance(node, CommentedMap):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [_plain(v) for v in node]
    return node


def load_settings(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load config.yml (or AFTERCARE_CONFIG, or `path`) and the secrets from the environment."""
    env = os.environ if environ is None else environ
    config_path = Path(path or env.get("AFTERCARE_CONFIG") or DEFAULT_CONFIG).resolve()
    raw = _read_yaml(config_path)
    values: dict[str, Any] = _plain(raw)
    for var, keys in _ENV_SECRETS.items():
        value = env.get(var)
        if value is None or value == "":
            continue
        target = values
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{config_path}: key '{key}' must be a mapping")
        target[keys[-1]] = value
    values["config_path"] = config_path
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        dotted = ".".join(str(p) for p in loc)
        line = _line_of(raw, loc)
        where = f"{config_path}:{line}" if line else str(config_path)
        env_var = next((v for v, k in _ENV_SECRETS.items() if ".".join(k) == dotted), None)
        if env_var and env.get(env_var):
            where = f"environment variable {env_var}"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key; remove it or check its spelling against config.yml"
        elif dotted not in _SECRET_KEYS and "input" in error and error["type"] != "missing":
            shown = repr(error["input"])
            if len(shown) <= 60:
                message = f"{message} (got {shown})"
        raise ConfigError(f"{where}: key '{dotted}': {message}") from None
    if settings.default_language not in settings.languages:
        line = _line_of(raw, ("default_language",))
        raise ConfigError(
            f"{config_path}:{line or 1}: key 'default_language': must be one of the "
            f"languages {list(settings.languages)}"
        )
    if settings.telegram.mode == "webhook" and settings.telegram.webhook_secret is None:
        raise ConfigError(
            f"{config_path}: key 'telegram.mode' is webhook: set AFTERCARE_WEBHOOK_SECRET "
            "to a random string (letters, digits, _ and -)"
        )
    return settings


def resolve_path(settings: Settings, path: Path) -> Path:
    """A path from the config, relative to the config file's folder."""
    return path if path.is_absolute() else settings.base_dir / path


def database_url(settings: Settings) -> str:
    """The database URL with a relative SQLite path made relative to the config folder."""
    url = settings.database.url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////") and ":memory:" not in url:
        return prefix + str(settings.base_dir / url[len(prefix) :])
    return url
