"""Vehicle sensor profiles: which decoded streams play which role, what the clock is, what is required.

A profile is a small versioned JSON file (docs/sensor-profiles.md). The package ships two
(``ad_core/sync/profiles/``): ``fleetgen`` (the demo fleet) and ``default`` (any other log); a market adds its
own vehicles' profiles as ``<market>/_profiles/*.json`` in the landing zone. A role is found by rules on what
a decoded table is (stream name, MCAP topic or CAN message, schema, decoded kind, a signal column), all
``fnmatch`` patterns; the first rule that matches a stream wins, streams tried in name order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Any

MS = 1_000_000
BUILTIN_PACKAGE = "ad_core.sync"
BUILTIN_FOLDER = "profiles"
DEFAULT_PROFILE = "default"
MANIFEST_KEY = "sensor_profile"  # drive.json may name its profile explicitly
_RULE_KEYS = ("stream", "topic", "schema", "kind", "signal")
_PROFILE_KEYS = {"name", "version", "description", "match", "roles", "reference", "required", "tolerance_check"}


class ProfileError(ValueError):
    """A profile file that does not parse, or a drive that names a profile nobody defined."""


@dataclass(frozen=True)
class StreamInfo:
    """What a decoded table is, as far as role rules can see (read from its Parquet schema and metadata)."""

    name: str
    kind: str
    topic: str  # MCAP topic or CAN message name ("" for MDF groups)
    schema: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class RoleRule:
    stream: str | None = None
    topic: str | None = None
    schema: str | None = None
    kind: str | None = None
    signal: str | None = None

    def match(self, info: StreamInfo) -> str | None:
        """The matched signal column ("" when the rule names none), or None when the stream does not match."""
        for pattern, value in ((self.stream, info.name), (self.topic, info.topic), (self.schema, info.schema)):
            if pattern is not None and not fnmatchcase(value, pattern):
                return None
        if self.kind is not None and info.kind != self.kind:
            return None
        if self.signal is None:
            return ""
        return next((c for c in info.columns if fnmatchcase(c, self.signal)), None)


@dataclass(frozen=True)
class Role:
    name: str
    rules: tuple[RoleRule, ...]
    tolerance_ns: int | None = None


@dataclass(frozen=True)
class RoleMatch:
    stream: str
    signal: str  # "" when the whole stream plays the role


@dataclass(frozen=True)
class SensorProfile:
    name: str
    version: int
    description: str
    match: Mapping[str, Any]
    roles: Mapping[str, Role]
    reference: tuple[str | float, ...]  # role names, or a grid rate in Hz (float), tried in order
    required: tuple[str, ...]
    tolerance_check: str  # "all": every synced stream must hold its tolerance; "roles": only the role streams
    source: str
    sha256: str

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def resolve(self, infos: Sequence[StreamInfo]) -> dict[str, RoleMatch | None]:
        """Role -> the stream (and signal) playing it in this drive, None where no stream does."""
        found: dict[str, RoleMatch | None] = {}
        for role in self.roles.values():
            found[role.name] = next(
                (
                    RoleMatch(info.name, signal)
                    for rule in role.rules
                    for info in sorted(infos, key=lambda i: i.name)
                    if (signal := rule.match(info)) is not None
                ),
                None,
            )
        return found

    def selects(self, manifest: Mapping[str, Any], streams: Sequence[str]) -> bool:
        """Whether this profile claims a drive by itself (a profile with an empty ``match`` never does)."""
        if not self.match:
            return False
        for key, pattern in self.match.get("manifest", {}).items():
            value: Any = manifest
            for part in key.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
            if value is None or not fnmatchcase(str(value), str(pattern)):
                return False
        return all(any(fnmatchcase(s, p) for s in streams) for p in self.match.get("streams", []))


def _fail(source: str, why: str) -> ProfileError:
    return ProfileError(f"sensor profile {source}: {why}")


def parse_profile(text: str, source: str) -> SensorProfile:
    """One profile from its JSON text; ProfileError names the file and what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(source, f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise _fail(source, "must be a JSON object")
    unknown = set(data) - _PROFILE_KEYS
    if unknown:
        raise _fail(source, f"unknown keys {sorted(unknown)}; allowed: {sorted(_PROFILE_KEYS)}")
    for key in ("name", "version", "roles", "reference"):
        if key not in data:
            raise _fail(source, f"missing {key!r}")
    roles: dict[str, Role] = {}
    for name, spec in data["roles"].items():
        rules = []
        for rule in spec.get("rules", []):
            bad = set(rule) - set(_RULE_KEYS)
            if bad or not rule:
                raise _fail(source, f"role {name!r}: a rule needs some of {list(_RULE_KEYS)}, got {sorted(rule)}")
            rules.append(RoleRule(**rule))
        if not rules:
            raise _fail(source, f"role {name!r} has no rules")
        tolerance = spec.get("tolerance_ms")
        roles[name] = Role(name, tuple(rules), None if tolerance is None else round(float(tolerance) * MS))
    reference: list[str | float] = []
    for choice in data["reference"]:
        if "role" in choice and choice["role"] in roles:
            reference.append(str(choice["role"]))
        elif "grid_hz" in choice and float(choice["grid_hz"]) > 0:
            reference.append(float(choice["grid_hz"]))
        else:
            raise _fail(source, f"reference {choice!r}: give a defined role or a positive grid_hz")
    required = tuple(data.get("required", []))
    if missing := [r for r in required if r not in roles]:
        raise _fail(source, f"required roles {missing} are not defined")
    check = data.get("tolerance_check", "roles")
    if check not in ("all", "roles"):
        raise _fail(source, f"tolerance_check must be 'all' or 'roles', got {check!r}")
    return SensorProfile(
        name=str(data["name"]),
        version=int(data["version"]),
        description=str(data.get("description", "")),
        match=data.get("match", {}),
        roles=roles,
        reference=tuple(reference),
        required=required,
        tolerance_check=check,
        source=source,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


def builtin_profile_texts() -> dict[str, str]:
    """File name -> JSON text of the profiles shipped in the package."""
    folder = resources.files(BUILTIN_PACKAGE).joinpath(BUILTIN_FOLDER)
    return {p.name: p.read_text() for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".json")}


def load_profiles(market_files: Sequence[Path] = ()) -> list[SensorProfile]:
    """The market's profiles (landing ``<market>/_profiles/``) first, then the built-in ones they do not replace."""
    profiles = [parse_profile(Path(p).read_text(), f"{Path(p).name} (market)") for p in sorted(market_files)]
    names = {p.name for p in profiles}
    if len(names) != len(profiles):
        raise ProfileError(f"two market profiles share a name: {sorted(p.name for p in profiles)}")
    for file, text in builtin_profile_texts().items():
        profile = parse_profile(text, f"{file} (built-in)")
        if profile.name not in names:
            profiles.append(profile)
    return profiles


def select_profile(
    profiles: Sequence[SensorProfile], manifest: Mapping[str, Any] | None, streams: Sequence[str]
) -> SensorProfile:
    """The drive's profile: the one its drive.json names, else the first that claims it, else ``default``."""
    by_name = {p.name: p for p in profiles}
    named = (manifest or {}).get(MANIFEST_KEY)
    if named is not None:
        if named not in by_name:
            raise ProfileError(
                f"drive.json names sensor profile {named!r}, which is not defined (known: {sorted(by_name)})"
            )
        return by_name[named]
    for profile in profiles:
        if profile.selects(manifest or {}, streams):
            return profile
    return by_name[DEFAULT_PROFILE]


def profiles_version(market_texts: Mapping[str, bytes]) -> str:
    """Content identity of the profiles a market's drives are synced with (built-in + the market's own)."""
    digest = hashlib.sha256()
    for name, text in sorted(builtin_profile_texts().items()):
        digest.update(f"builtin/{name}\0{hashlib.sha256(text.encode()).hexdigest()}\n".encode())
    for name, data in sorted(market_texts.items()):
        digest.update(f"market/{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return digest.hexdigest()
