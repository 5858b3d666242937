"""Configuration: pydantic models, layered sources, dotted ``key=value`` overrides.

Sources are merged in this order, later ones winning:

1. the models' defaults;
2. a TOML file: ``--config PATH``, else ``quant.toml`` in the working directory if present;
3. environment variables ``QUANT_<KEY>``, ``__`` separating levels (``QUANT_STRATEGY__FAST=5``);
4. command-line ``key=value`` pairs with dotted keys (``strategy.fast=5``, ``data.start=2021-01-01``).

Plugin sections (``strategy``, ``broker``, ``store``, ``exchange``) are chosen by name
(``strategy=maker_vol`` is short for ``strategy.name=maker_vol``) and the rest of the section is
validated by that plugin's own ``Config`` model. Sections merge key by key like every other part:
naming the plugin in a later source (``broker=live`` on the command line) chooses it and keeps the
section's keys from earlier sources (``QUANT_BROKER__API_KEY``, ``[broker] leverage = 3``). Nothing
is dropped: a key the chosen plugin's model does not know is an error naming it.

Every mistake is a :class:`ConfigError` whose message names the full dotted key and, for unknown
keys and names, the valid choices.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
import typing
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
)

from . import secrets
from .errors import ConfigError
from .plugins import Registry, did_you_mean

log = logging.getLogger(__name__)

#: ``QUANT_*`` variables that are settings of the program, not config keys.
RESERVED_ENV = {
    "QUANT_LOAD_PLUGINS",
    "QUANT_STRICT_PLUGINS",
    "QUANT_TRACE_PLUGINS",
    "QUANT_HOME",
    "QUANT_DEBUG",
    "QUANT_CONFIG",
}

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration(value: Any) -> timedelta:
    """``"30d"``, ``"1h"``, ``"15m"``, ``"90s"``, ``"500ms"``, ``"2w"`` or a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _DURATION_UNITS[match.group(2)])
    raise ValueError(f"expected a duration like 30d, 1h, 15m or 90s, got {value!r}")


def format_duration(value: timedelta) -> str:
    ms = round(value.total_seconds() * 1000)
    for unit in ("w", "d", "h", "m", "s"):
        size = int(_DURATION_UNITS[unit] * 1000)
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def parse_timestamp(value: Any) -> datetime | None:
    """A UTC datetime from ``"2021-01-01"``, an ISO string, a date, or epoch milliseconds."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expected a date like 2021-01-01 or 2021-01-01T12:00, got {value!r}") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ValueError(f"expected a date, got {value!r}")


def registered(kind: str):
    """A ``str`` config field that must name a registered ``kind`` (checked when config loads).

    ``fill_model: registered("fill_model") = Field("through", ...)``
    """

    def check(value: str, info: ValidationInfo) -> str:
        registry = (info.context or {}).get("registry")
        if registry is not None and value not in registry.names(kind):
            choices = registry.names(kind)
            raise ValueError(
                f"unknown {kind.replace('_', ' ')} {value!r}{did_you_mean(value, choices)}; available: {', '.join(choices) or 'none'}"
            )
        return value

    return Annotated[str, AfterValidator(check)]


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]
Timestamp = Annotated[
    datetime | None,
    BeforeValidator(parse_timestamp),
    PlainSerializer(lambda v: v.isoformat() if v else None, return_type=str | None),
]


class QuantModel(BaseModel):
    """Base of every config model: frozen, unknown keys forbidden, defaults validated."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class DataConfig(QuantModel):
    """Which bars a run uses."""

    start: Timestamp = Field(None, description="first bar (UTC date or datetime); default: earliest available")
    end: Timestamp = Field(None, description="end of the range, exclusive; default: latest available")
    file: Path | None = Field(None, description="read bars from this parquet/CSV file instead of the store")
    mark: typing.Literal["auto", "off"] = Field(
        "auto",
        description="liquidation on the mark price: auto = mark-price klines from data.mark_file, else the store, else "
        "the bundled sample's, when they cover the run (else the last price); off = always the last price",
    )
    mark_file: Path | None = Field(None, description="mark-price klines (parquet/CSV, bar columns) for a run; must cover the run's bars")
    price: typing.Literal["trade", "mark"] = Field(
        "trade", description="quant data fetch/import/gaps/export: trade (last-price) klines, or mark-price klines (price=mark)"
    )
    max_gap: Duration = Field(
        "6h",
        description="longest jump in ts a run may span (exchange outages are shorter; stretches of data are further apart)",
    )


class InstrumentConfig(QuantModel):
    """Overrides of the instrument's exchange filters and fees (None keeps the exchange's value)."""

    kind: typing.Literal["spot", "perpetual"] | None = Field(None, description="market kind")
    tick_size: float | None = Field(None, gt=0, description="price step")
    lot_size: float | None = Field(None, gt=0, description="quantity step")
    min_notional: float | None = Field(None, ge=0, description="smallest order value in quote currency")
    maker_fee: float | None = Field(None, description="maker fee rate, e.g. 0.0002 for 0.02%")
    taker_fee: float | None = Field(None, description="taker fee rate, e.g. 0.0005 for 0.05%")


class Choice(BaseModel):
    """A plugin chosen by name plus its validated config."""

    model_config = ConfigDict(frozen=True)

    name: str
    config: SerializeAsAny[BaseModel] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.config is not None:
            out.update(self.config.model_dump(mode="json"))
        return out


class RiskConfig(BaseModel):
    """Pre-trade risk checks: ``checks`` lists them in order, ``settings`` holds each one's config."""

    model_config = ConfigDict(frozen=True)

    checks: tuple[Choice, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"checks": [c.name for c in self.checks]}
        for choice in self.checks:
            if choice.config is not None:
                out[choice.name] = choice.config.model_dump(mode="json")
        return out


class RunConfig(QuantModel):
    """Everything a run (backtest, paper or live) needs."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    strategy: Choice = Field(description="strategy plugin and its parameters")
    broker: Choice = Field(description="where orders go: sim (backtest), paper, live, backtrader")
    store: Choice = Field(description="market-data store plugin and its settings")
    exchange: Choice = Field(description="exchange (data source) and its settings")
    symbol: str = Field("BTC/USDT:USDT", description="market in ccxt notation (BTC/USDT spot, BTC/USDT:USDT perpetual)")
    timeframe: str = Field("1m", description="bar size of the run")
    data: DataConfig = Field(default_factory=DataConfig, description="which bars to use")
    instrument: InstrumentConfig = Field(default_factory=InstrumentConfig, description="fee and filter overrides")
    risk: RiskConfig = Field(default_factory=RiskConfig, description="pre-trade risk checks")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict in the same shape the TOML file and ``key=value`` pairs use."""
        return {
            "strategy": self.strategy.to_dict(),
            "broker": self.broker.to_dict(),
            "store": self.store.to_dict(),
            "exchange": self.exchange.to_dict(),
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "data": self.data.model_dump(mode="json"),
            "instrument": self.instrument.model_dump(mode="json"),
            "risk": self.risk.to_dict(),
        }


#: Plugin-chosen sections: (config key, registry kind, default name, must the name be registered).
SECTIONS: tuple[tuple[str, str, str, bool], ...] = (
    ("strategy", "strategy", "sma_cross", True),
    ("broker", "broker", "sim", True),
    ("store", "store", "chdb", False),
    ("exchange", "data_source", "binanceusdm", False),
)


# ----------------------------------------------------------------------------------------------
# Reading sources into nested dicts


def parse_assignments(pairs: Iterable[str], *, source: str = "command line") -> dict[str, Any]:
    """``["strategy.fast=5", "broker=sim"]`` -> ``{"strategy": {"fast": "5"}, "broker": "sim"}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{source}: expected key=value, got {pair!r}", hint="for example strategy.fast=5")
        _set_dotted(out, key.split("."), value, source)
    return out


def _set_dotted(target: dict[str, Any], parts: list[str], value: Any, source: str) -> None:
    node = target
    for i, part in enumerate(parts[:-1]):
        existing = node.get(part)
        if existing is None:
            node[part] = existing = {}
        elif isinstance(existing, str) and i == 0 and _is_section(part):
            node[part] = existing = {"name": existing}
        elif not isinstance(existing, dict):
            raise ConfigError(f"{source}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = existing
    last = parts[-1]
    if isinstance(node.get(last), dict) and not isinstance(value, dict):
        if len(parts) == 1 and _is_section(last):
            node[last]["name"] = value
            return
        raise ConfigError(f"{source}: {'.'.join(parts)} is a section, not a value")
    node[last] = value


def _is_section(key: str) -> bool:
    return any(key == s[0] for s in SECTIONS)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    warning = secrets.check_file(path, data)
    if warning:
        log.warning("%s", warning)
    return data


def read_env(env: dict[str, str]) -> dict[str, Any]:
    """``QUANT_STRATEGY__FAST=5`` -> ``{"strategy": {"fast": "5"}}``; reserved names are skipped."""
    pairs = []
    for name, value in sorted(env.items()):
        if not name.startswith("QUANT_") or name in RESERVED_ENV:
            continue
        key = name[len("QUANT_") :].lower().replace("__", ".")
        pairs.append(f"{key}={value}")
    for name, value in env.items():
        if name.startswith("QUANT_") and secrets.is_secret_key(name.rsplit("__", 1)[-1]):
            secrets.register(value)
    return parse_assignments(pairs, source="environment")


def _normalise(layer: dict[str, Any]) -> dict[str, Any]:
    out = dict(layer)
    for key, *_ in SECTIONS:
        if isinstance(out.get(key), str):
            out[key] = {"name": out[key]}
    return out


def merge_layers(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge key by key, later layers winning.

    A plugin section is no exception: ``broker=live`` in a later layer sets ``broker.name`` and
    keeps the ``broker.*`` keys of earlier layers, which the chosen plugin's model then validates
    (an unknown key is an error there), so no setting the user gave is dropped without a word.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        layer = _normalise(layer)
        for key, value in layer.items():
            old = merged.get(key)
            if isinstance(old, dict) and isinstance(value, dict):
                merged[key] = _deep_merge(old, value)
            else:
                merged[key] = value
    return merged


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def gather(
    pairs: Iterable[str] = (),
    *,
    config_path: Path | str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Read the TOML file, environment and ``key=value`` pairs into one merged nested dict."""
    env = dict(os.environ if env is None else env)
    cwd = Path.cwd() if cwd is None else cwd
    layers: list[dict[str, Any]] = []
    path = config_path or env.get("QUANT_CONFIG")
    if path:
        layers.append(read_toml(Path(path)))
    elif (cwd / "quant.toml").exists():
        layers.append(read_toml(cwd / "quant.toml"))
    layers.append(read_env(env))
    cli = parse_assignments(pairs)
    for value in secrets.secret_values(cli):
        secrets.register(value)
    layers.append(cli)
    return merge_layers(*layers)


# ----------------------------------------------------------------------------------------------
# Validation with one-line errors


def _coerce_lists(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """Let ``a,b,c`` or a JSON list stand for a list-typed field given as a string."""
    out = dict(values)
    for name, field in model.model_fields.items():
        value = out.get(name)
        origin = typing.get_origin(field.annotation)
        if isinstance(value, str) and origin in (list, tuple, set, frozenset):
            text = value.strip()
            out[name] = json.loads(text) if text.startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
    return out


def validate_model(
    model: type[BaseModel], values: dict[str, Any], *, prefix: str = "", what: str = "", registry: Registry | None = None
) -> BaseModel:
    """Build ``model`` from ``values`` or raise a one-line :class:`ConfigError` naming the key."""
    try:
        return model.model_validate(_coerce_lists(model, values), context={"registry": registry})
    except ValidationError as exc:
        raise _config_error(exc, model, prefix, what) from None


def _config_error(exc: ValidationError, model: type[BaseModel], prefix: str, what: str) -> ConfigError:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc) or prefix or "config"
    if err["type"] == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        valid = sorted(owner.model_fields) if owner else []
        whose = f" for {what}" if what and len(loc) == 1 else ""
        return ConfigError(
            f"{key}: unknown key{whose}{did_you_mean(loc[-1], valid)}; valid keys: {', '.join(valid) or 'none'}",
            hint="`quant config show` prints every key with its value",
        )
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    got = err.get("input")
    shown = "" if err["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
    extra = f", {len(exc.errors()) - 1} more error(s)" if len(exc.errors()) > 1 else ""
    return ConfigError(f"{key}: {message}{shown}{extra}")


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *typing.get_args(annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def _choice(registry: Registry, section: str, kind: str, raw: Any, default: str, required: bool) -> Choice:
    values = dict(raw) if isinstance(raw, dict) else ({"name": raw} if raw is not None else {})
    name = values.pop("name", default)
    if not isinstance(name, str):
        raise ConfigError(f"{section}.name: expected a name, got {name!r}")
    if required or name in registry.names(kind) or values:
        reg = registry.get(kind, name, key=section)
    else:
        return Choice(name=name)
    model = reg.config_model
    if model is None:
        if values:
            raise ConfigError(f"{section}.{next(iter(values))}: {kind.replace('_', ' ')} {name!r} takes no settings")
        return Choice(name=name)
    return Choice(name=name, config=validate_model(model, values, prefix=section, what=f"{section} {name!r}", registry=registry))


def _risk(registry: Registry, raw: Any) -> RiskConfig:
    if raw is None:
        return RiskConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"risk: expected a section, got {raw!r}")
    values = dict(raw)
    checks = values.pop("checks", [])
    if isinstance(checks, str):
        checks = [c.strip() for c in checks.split(",") if c.strip()]
    choices = []
    for name in checks:
        settings = values.pop(name, {})
        choices.append(_choice(registry, f"risk.{name}", "risk_check", {"name": name, **settings}, name, True))
    if values:
        key = next(iter(values))
        raise ConfigError(
            f"risk.{key}: settings for a check that risk.checks does not enable",
            hint=f"add it: risk.checks={','.join([*checks, key])}",
        )
    return RiskConfig(checks=tuple(choices))


def resolve(raw: dict[str, Any], registry: Registry, model: type[RunConfig] = RunConfig) -> RunConfig:
    """Validate a merged nested dict into a :class:`RunConfig` using the plugins' own models."""
    values = dict(raw)
    resolved: dict[str, Any] = {}
    for section, kind, default, required in SECTIONS:
        resolved[section] = _choice(registry, section, kind, values.pop(section, None), default, required)
    resolved["risk"] = _risk(registry, values.pop("risk", None))
    unknown = [k for k in values if k not in model.model_fields]
    if unknown:
        valid = sorted(model.model_fields)
        raise ConfigError(
            f"{unknown[0]}: unknown key{did_you_mean(unknown[0], valid)}; valid keys: {', '.join(valid)}",
            hint="`quant config show` prints every key with its value",
        )
    base = {k: v for k, v in values.items()}
    for key in ("data", "instrument"):
        if key in base:
            if not isinstance(base[key], dict):
                raise ConfigError(f"{key}: expected a section, got {base[key]!r}")
            sub = model.model_fields[key].annotation
            base[key] = validate_model(sub, base[key], prefix=key, registry=registry)
    try:
        return model.model_validate({**base, **resolved})
    except ValidationError as exc:
        raise _config_error(exc, model, "", "") from None


def load_run_config(
    pairs: Iterable[str] = (),
    registry: Registry | None = None,
    *,
    config_path: Path | str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> RunConfig:
    """Gather every source and validate: the one call the CLI and notebooks make."""
    if registry is None:
        from .plugins import load_plugins

        registry = load_plugins(env).registry
    return resolve(gather(pairs, config_path=config_path, env=env, cwd=cwd), registry)


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def config_toml(config: RunConfig) -> str:
    """The config as TOML that ``--config`` reads back (unset values left out)."""
    import tomli_w

    return tomli_w.dumps(_drop_none(config.to_dict()))


def describe_model(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, default, description)`` for every field, for ``--help`` style listings."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        default = "" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((key, default, field.description or ""))
    return rows
