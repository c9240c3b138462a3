"""Launch: a form generated from ExperimentConfig, presets, YAML import/export."""

from __future__ import annotations

import streamlit as st
import yaml

from app.forms import config_form
from app.state import link_to_run, store
from sslengine.config import ExperimentConfig, config_errors, parse_config
from sslengine.methods import METHODS
from sslengine.presets import PRESETS
from tasks.submit import BrokerUnavailable, submit

st.title("Launch a pretraining run")

if "form_base" not in st.session_state:
    st.session_state.form_base = ExperimentConfig().model_dump(mode="json")
errors: dict[str, str] = st.session_state.get("form_errors", {})

c1, c2 = st.columns([2, 1])
with c1:
    choice = st.selectbox("Preset", ["(keep current)", *PRESETS], key="preset")
    if choice != "(keep current)" and st.session_state.get("_applied_preset") != choice:
        base = ExperimentConfig().model_dump(mode="json")
        for k, v in PRESETS[choice].items():
            base[k] = {**base[k], **v} if isinstance(v, dict) else v
        st.session_state.form_base = base
        st.session_state._applied_preset = choice
        for key in [k for k in st.session_state if str(k).startswith("cfg.")]:
            del st.session_state[key]
        st.rerun()
with c2:
    uploaded = st.file_uploader("Import YAML", type=["yaml", "yml"], key="yaml_import")
    if uploaded is not None and st.session_state.get("_imported") != uploaded.file_id:
        try:
            st.session_state.form_base = parse_config(
                yaml.safe_load(uploaded.getvalue()) or {}
            ).model_dump(mode="json")
            st.session_state._imported = uploaded.file_id
            for key in [k for k in st.session_state if str(k).startswith("cfg.")]:
                del st.session_state[key]
            st.rerun()
        except Exception as err:  # noqa: BLE001 - shown to the user, nothing queued
            st.error(f"Could not import {uploaded.name}: {err}")

data = config_form(st.session_state.form_base, sorted(METHODS), errors)
notes = st.text_area("Notes", key="notes")
if "" in errors:
    st.error(errors[""])

b1, b2 = st.columns([1, 1])
with b1:
    launch = st.button("Launch", type="primary", key="launch")
with b2:
    st.download_button(
        "Export YAML",
        yaml.safe_dump(data, sort_keys=False),
        file_name="experiment.yaml",
        mime="text/yaml",
    )

if launch:
    problems = config_errors(data)
    st.session_state.form_errors = problems
    if problems:
        st.rerun()
    else:
        try:
            run_id = submit(
                parse_config(data), name=data.get("name", ""), notes=notes, store=store()
            )
        except BrokerUnavailable as err:
            st.error(str(err))
        else:
            st.session_state.last_launched = run_id

if st.session_state.get("last_launched"):
    run_id = st.session_state.last_launched
    st.success(f"Queued run {run_id}")
    link_to_run(run_id, f"Open run {run_id}")
