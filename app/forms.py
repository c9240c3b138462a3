"""A Streamlit form generated from the pydantic `ExperimentConfig` (no field written twice).

Each field's widget follows from its type annotation: Literal -> selectbox, bool -> checkbox,
int/float -> number input, anything else (optional numbers, lists, unions) -> text parsed as
YAML. Validation errors (`config_errors`, keyed by pydantic's dotted location) are routed to the
deepest widget whose path prefixes the location (`train.devices.int` -> `train.devices`,
`eval.knn_k.0` -> `eval.knn_k`) and shown under it; anything no drawn widget owns is listed at
the top of the form, so no error is ever dropped.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import streamlit as st
import yaml
from pydantic import BaseModel

from sslengine.config import ExperimentConfig, Section

ALWAYS = ("dataset", "backbone", "views", "optim", "train", "eval")


def _literal_choices(annotation: Any) -> list | None:
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return None


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Section)


def form_paths() -> list[str]:
    """Every dotted path the form can own an error for: top-level fields, sections, their fields."""
    paths: list[str] = []
    for name, info in ExperimentConfig.model_fields.items():
        paths.append(name)
        if _is_section(info.annotation):
            paths += [f"{name}.{field}" for field in info.annotation.model_fields]
    return paths


def error_owner(loc: str, paths: list[str] | set[str]) -> str | None:
    """The deepest path that is ``loc`` or a prefix of it on a dot boundary (None: no owner).

    ``train.devices`` owns ``train.devices.int`` but not ``train.devices_x``."""
    owners = [p for p in paths if loc == p or loc.startswith(p + ".")]
    return max(owners, key=len, default=None)


def _expected(msg: str) -> str | None:
    """'Input should be a valid integer, unable to ...' -> 'an integer' (None: not that form)."""
    if not msg.startswith("Input should be "):
        return None
    what = msg.removeprefix("Input should be ").split(", ")[0]
    return what.replace("a valid integer", "an integer").replace("a valid ", "a ")


def _readable(msg: str) -> str:
    """A pydantic type error as 'expected an integer'; any other message unchanged."""
    what = _expected(msg)
    if not what or not msg.startswith("Input should be a valid "):
        return msg
    detail = msg.partition(", ")[2]  # keep 'got a number with a fractional part'
    return f"expected {what}" + (f", {detail}" if detail.startswith("got ") else "")


def _merge(entries: list[tuple[str, str]]) -> str:
    """One message for one field from (location below the field, message) pairs: the branches
    of a union merge into 'expected X or Y'; list items are named 'item N' (counted from 1)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for suffix, msg in entries:
        parts = suffix.split(".") if suffix else []
        n_items = next((i for i, part in enumerate(parts) if not part.isdigit()), len(parts))
        item = ".".join(str(int(part) + 1) for part in parts[:n_items])
        groups.setdefault(item, []).append((".".join(parts[n_items:]), msg))
    by_text: dict[str, list[str]] = {}  # items with the same problem are named together
    for item, group in groups.items():
        plain = [_readable(msg) for tag, msg in group if not tag]
        branches = [msg for tag, msg in group if tag]
        phrases = [_expected(msg) for msg in branches]
        if branches and all(phrases):
            plain.append("expected " + " or ".join(dict.fromkeys(p for p in phrases if p)))
        else:
            plain += branches
        by_text.setdefault("; ".join(dict.fromkeys(plain)), []).append(item)
    out = []
    for text, items in by_text.items():
        named = [i for i in items if i]
        if len(items) > len(named):
            out.append(text)
        if named:
            out.append(f"item{'s' if len(named) > 1 else ''} {', '.join(named)}: {text}")
    return "; ".join(out)


def route_errors(
    errors: dict[str, str], paths: list[str] | set[str] | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """Split `config_errors` output into (one readable message per owning form path, errors no
    path owns). Every message names the location it is about."""
    paths = form_paths() if paths is None else paths
    sections = {p for p in paths if "." not in p and _is_section(_annotation(p))}
    by_owner: dict[str, list[tuple[str, str]]] = {}
    unowned: dict[str, str] = {}
    for loc, msg in errors.items():
        owner = error_owner(loc, paths)
        if owner is None:
            unowned[loc] = f"`{loc}`: {msg}" if loc else msg
        else:
            by_owner.setdefault(owner, []).append((loc[len(owner) + 1 :], msg))
    placed: dict[str, str] = {}
    for owner, entries in by_owner.items():
        if owner in sections:  # a section's own check, or a key below it with no widget
            placed[owner] = "\n\n".join(
                f"`{owner}.{sub}`: {msg}" if sub else f"`{owner}`: {msg}" for sub, msg in entries
            )
        else:
            placed[owner] = f"`{owner}`: {_merge(entries)}"
    return placed, unowned


def _annotation(name: str) -> Any:
    info = ExperimentConfig.model_fields.get(name)
    return None if info is None else info.annotation


def field_widget(
    path: str,
    annotation: Any,
    value: Any,
    help_text: str | None,
    errors: dict[str, str],
    choices: list | None = None,
    label: str | None = None,
) -> Any:
    """Draw one field; ``errors`` maps a path to its message (see `route_errors`)."""
    label = label or path.split(".")[-1]
    key = f"cfg.{path}"
    choices = choices or _literal_choices(annotation)
    if choices:
        index = choices.index(value) if value in choices else 0
        out = st.selectbox(label, choices, index=index, key=key, help=help_text)
    elif annotation is bool:
        out = st.checkbox(label, value=bool(value), key=key, help=help_text)
    elif annotation is int:
        out = int(st.number_input(label, value=int(value), step=1, key=key, help=help_text))
    elif annotation is float:
        out = float(
            st.number_input(label, value=float(value), key=key, help=help_text, format="%g")
        )
    else:  # optional / union / list: edited as YAML text, validated by pydantic
        text = (
            ""
            if value is None
            else (
                value
                if isinstance(value, str)
                # a scalar dumps as '1\n...\n' (document end marker): keep the value only
                else yaml.safe_dump(value, default_flow_style=True).removesuffix("...\n").strip()
            )
        )
        raw = st.text_input(label, value=str(text), key=key, help=help_text)
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        if raw.strip() == "" and union and type(None) in typing.get_args(annotation):
            out = None
        elif annotation is str or (union and str in typing.get_args(annotation)):
            out = raw
        else:
            try:
                out = yaml.safe_load(raw)
            except yaml.YAMLError:
                out = raw
    if path in errors:
        st.error(errors[path], icon="⚠️")
    return out


def section_widgets(
    prefix: str, model: type[BaseModel], values: dict[str, Any], errors: dict[str, str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        out[name] = field_widget(
            f"{prefix}.{name}", info.annotation, values.get(name), info.description, errors
        )
    if prefix in errors:
        st.error(errors[prefix], icon="⚠️")
    return out


def config_form(base: dict[str, Any], methods: list[str], errors: dict[str, str]) -> dict:
    """Draw every field of the config (the chosen method's section only); return raw values.

    ``errors`` is `config_errors` output: each is shown under the widget that owns it, the rest
    (whole-config checks, fields not drawn now) at the top of the form."""
    placed, unowned = route_errors(errors)
    top_box = st.container()
    drawn: set[str] = {"method", "name", "seed"}
    data: dict[str, Any] = {}
    top = ExperimentConfig.model_fields
    c1, c2, c3 = st.columns(3)
    with c1:
        data["method"] = field_widget(
            "method", str, base.get("method"), top["method"].description, placed, choices=methods
        )
    with c2:
        data["name"] = field_widget(
            "name", str, base.get("name", ""), "shown in the runs table", placed, label="run name"
        )
    with c3:
        data["seed"] = field_widget("seed", int, base.get("seed", 0), None, placed)
    sections = [*ALWAYS, data["method"]]
    for section in sections:
        annotation = top[section].annotation
        if not _is_section(annotation):
            continue
        has_error = any(k == section or k.startswith(section + ".") for k in placed)
        with st.expander(section, expanded=has_error or section in ("dataset", "train")):
            data[section] = section_widgets(section, annotation, base.get(section, {}), placed)
        drawn |= {section, *(f"{section}.{name}" for name in annotation.model_fields)}
    left = [*unowned.values(), *(msg for path, msg in placed.items() if path not in drawn)]
    if left:
        with top_box:
            st.error("\n\n".join(left), icon="⚠️")
    return data
