"""Normalisation and validation of identifiers: the single source every path uses.

An entity of the schema declares its fields, each with a list of normalisers and a regex
that must match the whole normalised value. Raw values are screened before anything else:
control characters and non-ASCII characters are rejected, never trimmed away, so that a
look-alike or a smuggled newline cannot become a different, valid identifier.

Usage::

    artifact = Entity.from_schema("artifact", schema["entities"]["artifact"])
    ns = artifact.clean("namespace", " Acme ")    # -> "acme"
    artifact.clean("name", "../etc")               # raises ValidationError
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ValidationError
from .versions import VersionScheme, get_scheme

NORMALIZERS: dict[str, Callable[[str], str]] = {
    "trim": str.strip,
    "lower": str.lower,
    "upper": str.upper,
    "underscore_to_dash": lambda s: s.replace("_", "-"),
    "dot_to_dash": lambda s: s.replace(".", "-"),
}

# Printable ASCII only: 0x20-0x7e. Everything else is refused before normalisation.
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


def is_unicode_text(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8: False when it holds a lone surrogate (a
    JSON escape such as ``\\ud800``, or bytes decoded with ``surrogateescape``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Field:
    """One field of an entity: how to normalise it and what it must look like after."""

    name: str
    normalize: tuple[Callable[[str], str], ...]
    pattern: re.Pattern[str]
    max_length: int = 1020  # of the raw value, before normalisation

    def normalize_only(self, raw: Any, *, label: str | None = None) -> str:
        """Screen and normalise without the pattern check (for prefixes in filters)."""
        label = label or self.name
        if not isinstance(raw, str):
            raise ValidationError(f"{label} must be a string", details={"field": label})
        if len(raw) > self.max_length:
            raise ValidationError(
                f"{label} is too long: at most {self.max_length} characters",
                details={"field": label},
            )
        if not _PRINTABLE_ASCII.fullmatch(raw):
            raise ValidationError(
                f"{label} contains characters that are not printable ASCII",
                details={"field": label},
            )
        value = raw
        for fn in self.normalize:
            value = fn(value)
        return value


@dataclass(frozen=True)
class Entity:
    """An entity of the schema: its fields and, optionally, its version scheme."""

    name: str
    fields: Mapping[str, Field]
    primary_key: tuple[str, ...] = ()
    version_field: str | None = None
    scheme: VersionScheme | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_schema(cls, name: str, spec: Mapping[str, Any]) -> Entity:
        """Build from the schema's ``entities.<name>`` section (already validated)."""
        fields = {
            fname: Field(
                name=fname,
                normalize=tuple(NORMALIZERS[n] for n in fspec.get("normalize", [])),
                pattern=re.compile(fspec["pattern"]),
                max_length=fspec.get("max_length", 1020),
            )
            for fname, fspec in spec["fields"].items()
        }
        versioning = spec.get("versioning")
        return cls(
            name=name,
            fields=fields,
            primary_key=tuple(spec.get("primary_key", ())),
            version_field=versioning["field"] if versioning else None,
            scheme=get_scheme(versioning["scheme"]) if versioning else None,
        )

    def clean(self, field_name: str, raw: Any) -> str:
        """Normalise and validate one value of ``field_name``."""
        value = self.normalize(field_name, raw)
        self.validate(field_name, value)
        return value

    def normalize(self, field_name: str, raw: Any, *, label: str | None = None) -> str:
        """Screen and normalise one value without the final pattern check."""
        return self.fields[field_name].normalize_only(raw, label=label)

    def validate(self, field_name: str, value: Any, *, label: str | None = None) -> None:
        """Check an already normalised value; raises ValidationError naming ``label``."""
        label = label or field_name
        f = self.fields[field_name]
        if not isinstance(value, str) or not f.pattern.fullmatch(value):
            raise ValidationError(
                f"{label} is not valid: it must match {f.pattern.pattern}",
                details={"field": label},
            )
        if field_name == self.version_field and self.scheme is not None:
            try:
                self.scheme.parse(value)
            except ValidationError as err:
                raise ValidationError(
                    f"{label} is not a valid {self.scheme.name} version",
                    details={"field": label},
                ) from err
