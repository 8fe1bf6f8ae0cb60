"""Templates and conditions of pipeline ops, parsed once when a schema is compiled.

A value in an op's arguments may be:

- a reference ``"$var"``, ``"$var.a.b"`` or ``"$rows[0].version"``: the variable's value,
  whatever its type;
- a string with placeholders: ``"{namespace}"`` (a field of the request),
  ``"{principal.sub}"``, ``"{$var.a}"``; ``{{`` and ``}}`` are literal braces;
- a list or an object: compiled element by element;
- anything else: a literal.

Compiling yields a function of the request context, plus the names it reads, so that the
schema validator can check that every variable and field is defined before it is read.

Usage::

    t = compile_value({"v": "$blob.digest", "k": "{namespace}/{name}"})
    t.render(ctx)          # -> {"v": "sha256:...", "k": "acme/app"}
    t.vars, t.fields       # -> {"blob"}, {"namespace", "name"}
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

_REF = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*)")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PRINCIPAL = re.compile(r"principal((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")

CONDITIONS = ("equals", "is_null", "is_not_null", "is_empty", "is_not_empty", "not_in")


class TemplateError(ValueError):
    """Raised when a template or a condition cannot be parsed."""


class Context(Protocol):
    """What templates read from: request fields, variables and the principal."""

    fields: dict[str, Any]
    vars: dict[str, Any]

    @property
    def principal(self) -> dict[str, Any]: ...


def _walk(value: Any, steps: tuple[str | int, ...]) -> Any:
    for step in steps:
        if value is None:
            return None
        if isinstance(step, int):
            value = value[step] if isinstance(value, list) and step < len(value) else None
        else:
            value = value.get(step) if isinstance(value, dict) else None
    return value


def _steps(path: str) -> tuple[str | int, ...]:
    return tuple(int(index) if index else name for name, index in _STEP.findall(path))


@dataclass
class Template:
    """A compiled value: ``render(ctx)`` gives the value for one request."""

    render: Callable[[Context], Any]
    vars: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    constant: bool = False


def reference(text: str) -> tuple[str, tuple[str | int, ...]] | None:
    """The variable and the steps into it of ``$var.path``; None for any other text."""
    m = _REF.fullmatch(text)
    return (m.group(1), _steps(m.group(2))) if m else None


def compile_ref(text: str) -> Template:
    """Compile ``$var.path``; raises TemplateError if ``text`` is not a reference."""
    ref = reference(text)
    if ref is None:
        raise TemplateError(f"not a variable reference: {text!r}")
    name, steps = ref
    return Template(lambda ctx: _walk(ctx.vars.get(name), steps), vars={name})


def _compile_placeholder(expr: str) -> Template:
    expr = expr.strip()
    if expr.startswith("$"):
        return compile_ref(expr)
    m = _PRINCIPAL.fullmatch(expr)
    if m:
        steps = _steps(m.group(1))
        return Template(lambda ctx: _walk(ctx.principal, steps))
    if _FIELD.fullmatch(expr):
        return Template(lambda ctx: ctx.fields.get(expr), fields={expr})
    raise TemplateError(f"unknown placeholder {{{expr}}}")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def compile_string(text: str) -> Template:
    """Compile a string that may hold placeholders or be a whole reference."""
    if text.startswith("$") and _REF.fullmatch(text):
        return compile_ref(text)
    parts: list[Template | str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        parts.append(text[pos : m.start()])
        token = m.group(0)
        if token in ("{{", "}}"):
            parts.append(token[0])
        else:
            parts.append(_compile_placeholder(m.group(1)))
        pos = m.end()
    tail = text[pos:]
    if "{" in tail or "}" in tail:
        raise TemplateError(f"unbalanced brace in {text!r}")
    parts.append(tail)
    pieces = [p for p in parts if p != ""]
    if all(isinstance(p, str) for p in pieces):
        literal = "".join(p for p in pieces if isinstance(p, str))
        return Template(lambda ctx: literal, constant=True)
    out = Template(lambda ctx: None)
    for p in pieces:
        if isinstance(p, Template):
            out.vars |= p.vars
            out.fields |= p.fields
    if len(pieces) == 1 and isinstance(pieces[0], Template):
        single = pieces[0]
        out.render = lambda ctx: _text(single.render(ctx))
    else:
        frozen = tuple(pieces)
        out.render = lambda ctx: "".join(
            p if isinstance(p, str) else _text(p.render(ctx)) for p in frozen
        )
    return out


def compile_value(value: Any) -> Template:
    """Compile any JSON value of an op's arguments."""
    if isinstance(value, str):
        return compile_string(value)
    if isinstance(value, list):
        items = [compile_value(v) for v in value]
        out = Template(lambda ctx: [t.render(ctx) for t in items])
    elif isinstance(value, dict):
        entries = [(k, compile_value(v)) for k, v in value.items()]
        out = Template(lambda ctx: {k: t.render(ctx) for k, t in entries})
    else:
        return Template(lambda ctx: value, constant=True)
    subs = items if isinstance(value, list) else [t for _, t in entries]
    for t in subs:
        out.vars |= t.vars
        out.fields |= t.fields
    if all(t.constant for t in subs):
        fixed = value
        out.render = lambda ctx: fixed
        out.constant = True
    return out


def _is_empty(value: Any) -> bool:
    return value is None or (hasattr(value, "__len__") and len(value) == 0)


def compile_condition(spec: Any) -> Template:
    """Compile a ``when`` condition; a list means all of them must hold."""
    if isinstance(spec, list):
        if not spec:
            raise TemplateError("an empty condition list")
        parts = [compile_condition(s) for s in spec]
        out = Template(lambda ctx: all(p.render(ctx) for p in parts))
        for p in parts:
            out.vars |= p.vars
            out.fields |= p.fields
        return out
    if not isinstance(spec, dict) or len(spec) != 1:
        raise TemplateError(f"a condition is an object with one of {', '.join(CONDITIONS)}")
    ((kind, arg),) = spec.items()
    if kind in ("is_null", "is_not_null", "is_empty", "is_not_empty"):
        t = compile_value(arg)
        test = {
            "is_null": lambda v: v is None,
            "is_not_null": lambda v: v is not None,
            "is_empty": _is_empty,
            "is_not_empty": lambda v: not _is_empty(v),
        }[kind]
        return Template(lambda ctx: test(t.render(ctx)), vars=t.vars, fields=t.fields)
    if kind in ("equals", "not_in"):
        if not isinstance(arg, list) or len(arg) != 2:
            raise TemplateError(f"{kind} takes a list of two values")
        left, right = compile_value(arg[0]), compile_value(arg[1])
        if kind == "equals":

            def render(ctx: Context) -> bool:
                return bool(left.render(ctx) == right.render(ctx))

        else:
            if not isinstance(arg[1], list):
                raise TemplateError("not_in takes a value and a list")

            def render(ctx: Context) -> bool:
                return left.render(ctx) not in right.render(ctx)

        return Template(render, vars=left.vars | right.vars, fields=left.fields | right.fields)
    raise TemplateError(f"unknown condition {kind!r}; known: {', '.join(CONDITIONS)}")
