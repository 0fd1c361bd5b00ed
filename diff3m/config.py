"""Typed settings: a TOML file (``--config``) overridden by ``DIFF3M_<SECTION>__<KEY>`` env vars."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash
SECRET_MASK = "********"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the reason."""


def _check_ae(value: str) -> str:
    v = value.strip()
    if not v or not AE_TITLE_RE.match(v):
        raise ValueError("must be 1-16 printable ASCII characters without backslash")
    return v


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NodeSettings(_Section):
    """The DICOM listener."""

    ae_title: str = "DIFF3M"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    storage_dir: Path = Path("var/storage")
    allowed_calling_aets: list[str] = Field(
        default_factory=list, description="empty = any; 'AE' or 'AE@host' to pin a host"
    )
    study_quiet_seconds: float = Field(10.0, ge=0)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    max_associations: int = Field(16, ge=1, le=1024)
    max_pdu: int = Field(262_144, ge=0)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)
    min_free_disk_mb: int = Field(512, ge=0, description="refuse associations below this free space")
    sop_classes: list[str] = Field(
        default_factory=lambda: [
            "1.2.840.10008.5.1.4.1.1.1",  # CR Image Storage
            "1.2.840.10008.5.1.4.1.1.1.1",  # DX For Presentation
            "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX For Processing
        ]
    )

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return _check_ae(v)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, v: list[str]) -> list[str]:
        for entry in v:
            _check_ae(entry.split("@", 1)[0])
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> NodeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("tls_ca needs tls_cert and tls_key")
        return self

    @property
    def tls_enabled(self) -> bool:
        """True when the listener speaks TLS."""
        return self.tls_cert is not None


class Destination(_Section):
    """A C-STORE target."""

    name: str = Field(min_length=1)
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return _check_ae(v)


SendWhat = Literal["originals", "results"]


class RoutingRule(_Section):
    """Send originals and/or results to a destination when conditions hold."""

    name: str = Field(min_length=1)
    when: dict[str, Any] = Field(
        default_factory=dict,
        description="tag conditions (Modality, CallingAE, BodyPartExamined, ...) and result "
        "conditions (abnormal = true, score_gte = x)",
    )
    send: list[SendWhat] = Field(default_factory=lambda: list[SendWhat](["results"]))
    to: str = Field(min_length=1)

    @field_validator("send", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class DeliverySettings(_Section):
    """The delivery outbox: retries with exponential backoff and jitter, then dead letter."""

    max_attempts: int = Field(8, ge=1)
    backoff_seconds: float = Field(5.0, gt=0)
    backoff_max_seconds: float = Field(600.0, gt=0)


class ExtraField(_Section):
    """An extra EHR field added by configuration (LOINC code, UCUM unit)."""

    name: str
    loinc: str
    unit: str


class FhirSettings(_Section):
    """The FHIR R4 server holding the EHR; empty base_url means image-only."""

    base_url: str = ""
    auth: Literal["none", "bearer", "smart"] = "none"
    token: str = ""
    client_id: str = ""
    private_key: str = Field("", description="path to a PEM key (RS384/ES384) for SMART backend services")
    key_id: str = ""
    token_url: str = ""
    scope: str = "system/Patient.read system/Observation.read system/Observation.write " \
        "system/ServiceRequest.read system/ServiceRequest.write"
    ehr_window_days: int = Field(90, ge=0)
    timeout_seconds: float = Field(10.0, gt=0)
    max_retries: int = Field(3, ge=0)
    patient_identifier_system: str = Field("", description="identifier system for DICOM PatientID")
    issuer_systems: dict[str, str] = Field(
        default_factory=dict, description="DICOM IssuerOfPatientID -> FHIR identifier system"
    )
    extra_fields: list[ExtraField] = Field(default_factory=list)
    write_observations: bool = True
    triage: bool = True

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not re.match(r"^https?://", v):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _auth_needs(self) -> FhirSettings:
        if self.auth == "bearer" and not self.token:
            raise ValueError("auth = 'bearer' needs token")
        if self.auth == "smart" and not (self.client_id and self.private_key and self.token_url):
            raise ValueError("auth = 'smart' needs client_id, private_key and token_url")
        return self


class DatabaseSettings(_Section):
    """Where study state lives (the source of truth)."""

    url: str = "sqlite:///var/diff3m.sqlite"

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", v):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return v


class QueueSettings(_Section):
    """The task queue; the embedded default is a durable local SQLite transport."""

    broker_url: str = "sqla+sqlite:///var/queue.sqlite"
    requeue_after_seconds: float = Field(
        120.0, gt=0, description="the sweeper re-enqueues unfinished work untouched this long (lost messages)"
    )

    @field_validator("broker_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^(sqla\+sqlite|sqla\+postgresql(\+\w+)?|redis|rediss|memory)://", v):
            raise ValueError("must be sqla+sqlite:///..., redis://... or memory://")
        return v


class ModelSettings(_Section):
    """The Diff3M model used for inference."""

    checkpoint: str = "builtin:demo"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threshold: float | None = Field(None, description="empty = the checkpoint's calibrated threshold")
    steps: int | None = Field(None, ge=1, le=1000, description="DDIM steps; empty = checkpoint default")
    noise_level: int | None = Field(None, ge=1, le=999)
    batch_size: int = Field(4, ge=1, le=256)
    use_ehr: bool = True


class TriageSettings(_Section):
    """Worklist priority from the anomaly score; FHIR priority raised when abnormal."""

    stat_score: float | None = Field(None, description="score at or above which priority is 'stat'")
    urgent_when_abnormal: bool = True
    abnormal_priority: Literal["urgent", "asap", "stat"] = "urgent"


class WebSettings(_Section):
    """The worklist web UI and JSON API."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    token: str = ""
    base_url: str = Field("", description="public URL workers use for WADO-RS; empty = http://host:port")


class Settings(BaseSettings):
    """Effective configuration: defaults < TOML file < DIFF3M_* environment."""

    model_config = SettingsConfigDict(
        env_prefix="DIFF3M_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    node: NodeSettings = Field(default_factory=lambda: NodeSettings())
    destinations: list[Destination] = Field(default_factory=list)
    routing: list[RoutingRule] = Field(default_factory=list)
    delivery: DeliverySettings = Field(default_factory=lambda: DeliverySettings())
    fhir: FhirSettings = Field(default_factory=lambda: FhirSettings())
    database: DatabaseSettings = Field(default_factory=lambda: DatabaseSettings())
    queue: QueueSettings = Field(default_factory=lambda: QueueSettings())
    model: ModelSettings = Field(default_factory=lambda: ModelSettings())
    triage: TriageSettings = Field(default_factory=lambda: TriageSettings())
    web: WebSettings = Field(default_factory=lambda: WebSettings())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the environment overrides the TOML file, which load_settings passes as init values
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _references(self) -> Settings:
        names = [d.name for d in self.destinations]
        if len(names) != len(set(names)):
            raise ValueError("destinations: names must be unique")
        for rule in self.routing:
            if rule.to not in names:
                raise ValueError(f"routing '{rule.name}': unknown destination '{rule.to}'")
        return self

    def destination(self, name: str) -> Destination:
        """The destination called ``name``."""
        for d in self.destinations:
            if d.name == name:
                return d
        raise KeyError(name)

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data, secrets masked."""
        data = json.loads(self.model_dump_json())
        for section, key in (("fhir", "token"), ("web", "token")):
            if data[section][key]:
                data[section][key] = SECRET_MASK
        if data["fhir"]["private_key"] and "BEGIN" in data["fhir"]["private_key"]:
            data["fhir"]["private_key"] = SECRET_MASK
        for section, key in (("database", "url"), ("queue", "broker_url")):
            data[section][key] = re.sub(r"(//[^:/@]*:)[^@/]*@", rf"\1{SECRET_MASK}@", data[section][key])
        return data


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        lines.append(f"{key}: {e['msg']}" + (f" (got {e['input']!r})" if e["type"] != "missing" and
                                             not isinstance(e.get("input"), dict) else ""))
    return f"invalid configuration ({source}):\n  " + "\n  ".join(lines)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate settings; raise ConfigError naming the bad key and why."""
    source = str(config_file) if config_file else "defaults + environment"
    data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"invalid configuration ({source}): TOML syntax: {err}") from None
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None
    except ValueError as err:  # malformed env values and the like
        raise ConfigError(f"invalid configuration ({source}): {err}") from None
