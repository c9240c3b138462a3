"""A Streamlit form generated from the pydantic `ExperimentConfig` (no field written twice).

Each field's widget follows from its type annotation: Literal -> selectbox, bool -> checkbox,
int/float -> number input, anything else (optional numbers, lists, unions) -> text parsed as
YAML. Validation errors come back keyed by dotted field path and are shown under the field.
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


def field_widget(
    path: str,
    annotation: Any,
    value: Any,
    help_text: str | None,
    errors: dict[str, str],
    choices: list | None = None,
    label: str | None = None,
) -> Any:
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
                else yaml.safe_dump(value, default_flow_style=True).strip()
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
    """Draw every field of the config (the chosen method's section only); return raw values."""
    data: dict[str, Any] = {}
    top = ExperimentConfig.model_fields
    c1, c2, c3 = st.columns(3)
    with c1:
        data["method"] = field_widget(
            "method", str, base.get("method"), top["method"].description, errors, choices=methods
        )
    with c2:
        data["name"] = field_widget(
            "name", str, base.get("name", ""), "shown in the runs table", errors, label="run name"
        )
    with c3:
        data["seed"] = field_widget("seed", int, base.get("seed", 0), None, errors)
    sections = [*ALWAYS, data["method"]]
    for section in sections:
        annotation = top[section].annotation
        if not _is_section(annotation):
            continue
        has_error = any(k == section or k.startswith(section + ".") for k in errors)
        with st.expander(section, expanded=has_error or section in ("dataset", "train")):
            data[section] = section_widgets(section, annotation, base.get(section, {}), errors)
    return data
