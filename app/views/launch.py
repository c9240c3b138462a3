"""Launch: a form generated from ExperimentConfig; dataset picker with counts, presets, YAML
import/export, run name and notes; `?clone=<run id>` (or Runs -> Clone) prefills it."""

from __future__ import annotations

import streamlit as st
import yaml

from app.auth import current_user, require_launch
from app.dataset_choices import BUILT_IN_LABEL, dataset_choices
from app.forms import config_form, error_owner, form_paths
from app.state import link_to_run, store
from sslengine.config import DatasetConfig, ExperimentConfig, config_errors, parse_config
from sslengine.data.paths import dataset_roots
from sslengine.methods import METHODS
from sslengine.presets import PRESETS
from tasks.submit import BrokerUnavailable, submit

st.title("Launch a pretraining run")
s = store()


def reset_form(base: dict, keep: tuple[str, ...] = ()) -> None:
    """Make ``base`` the form's values: generated widgets re-read it once their keys are gone."""
    st.session_state.form_base = base
    st.session_state.form_errors = {}
    for key in [k for k in st.session_state if str(k).startswith("cfg.") and k not in keep]:
        del st.session_state[key]


if "form_base" not in st.session_state:
    st.session_state.form_base = ExperimentConfig().model_dump(mode="json")

# ---- clone: from the URL or from the Runs page's Clone action
clone_id = st.query_params.get("clone") or st.session_state.pop("clone_from", None)
if clone_id and st.session_state.get("_applied_clone") != clone_id:
    st.session_state._applied_clone = clone_id
    source = s.get_run(clone_id)
    if source is None:
        st.warning(f"Run '{clone_id}' to clone does not exist (it may have been deleted).")
    else:
        base = {**ExperimentConfig().model_dump(mode="json"), **source.config}
        try:  # an older run's config may miss newer fields: fill defaults, keep its values
            base = parse_config(base).model_dump(mode="json")
        except Exception as err:  # noqa: BLE001 - shown under the fields instead
            st.warning(f"The cloned config does not validate any more: {err}")
        base["name"] = f"{source.name} (clone)"[:200]
        reset_form(base)
        st.session_state.notes = (
            f"Clone of run {source.id} ({source.name}).\n{source.notes}".strip()
        )
        st.session_state.last_launched = None
    st.query_params["clone"] = clone_id
if st.session_state.get("_applied_clone"):
    st.caption(f"Prefilled from run {st.session_state._applied_clone}.")

errors: dict[str, str] = st.session_state.get("form_errors", {})

c1, c2 = st.columns([2, 1])
with c1:
    choice = st.selectbox("Preset", ["(keep current)", *PRESETS], key="preset")
    if choice != "(keep current)" and st.session_state.get("_applied_preset") != choice:
        base = ExperimentConfig().model_dump(mode="json")
        for k, v in PRESETS[choice].items():
            base[k] = {**base[k], **v} if isinstance(v, dict) else v
        st.session_state._applied_preset = choice
        reset_form(base)
        st.rerun()
with c2:
    uploaded = st.file_uploader("Import YAML", type=["yaml", "yml"], key="yaml_import")
    if uploaded is not None and st.session_state.get("_imported") != uploaded.file_id:
        try:
            imported = parse_config(yaml.safe_load(uploaded.getvalue()) or {})
        except Exception as err:  # noqa: BLE001 - shown to the user, nothing queued
            st.error(f"Could not import {uploaded.name}: {err}")
        else:
            st.session_state._imported = uploaded.file_id
            reset_form(imported.model_dump(mode="json"))
            st.rerun()

# ---- dataset: the built-in one or anything found in the configured data roots
roots = dataset_roots()
choices = dataset_choices(roots)
by_label = {c.label: c for c in choices}
ds_base = st.session_state.form_base.get("dataset", {})
current = next(
    (c.label for c in choices if c.name == ds_base.get("name") and c.root == ds_base.get("root")),
    None,
)
labels = list(by_label) if current else ["(as set in the form below)", *by_label]
picked = st.selectbox(
    "Dataset",
    labels,
    index=labels.index(current) if current else 0,
    key=f"dataset_pick.{current}",  # a new key when the form changes underneath (preset/import)
    help="The built-in digits, or a folder/archive inside the data roots: "
    + ", ".join(str(r) for r in roots),
)
if picked in by_label and picked != current:
    chosen = by_label[picked]
    base = dict(st.session_state.form_base)
    base["dataset"] = {**base.get("dataset", {}), "name": chosen.name, "root": chosen.root}
    st.session_state.form_base = base
    # only the two dataset widgets re-read the base; other fields keep what was typed
    for key in ("cfg.dataset.name", "cfg.dataset.root"):
        st.session_state.pop(key, None)
    st.rerun()

# filled in after the form is drawn: the counts follow the dataset fields as edited below
dataset_box = st.container()
data = config_form(st.session_state.form_base, sorted(METHODS), errors)


@st.cache_data(ttl=60, show_spinner="Counting images…")
def _dataset_info(name: str, root: str | None) -> dict:
    from sslengine.data.datasets import dataset_info

    return dataset_info(name, root, dataset_roots())


with dataset_box:
    ds = data.get("dataset") or {}
    try:
        info = _dataset_info(str(ds.get("name")), ds.get("root") or None)
    except Exception as err:  # noqa: BLE001 - any reason the data cannot be read is shown
        st.warning(f"Dataset not readable: {err}", icon=":material/folder_off:")
    else:
        per_split = ", ".join(f"{k}: {v:,}" for k, v in info["per_split"].items())
        n_classes = len(info["classes"])
        m1, m2, m3 = st.columns(3)
        m1.metric("Images", f"{info['images']:,}")
        m2.metric("Classes", n_classes)
        m3.metric("Splits", len(info["per_split"]) or "one folder")
        st.caption(
            f"{ds.get('name')} · {per_split or 'no split folders'} · classes: "
            + ", ".join(info["classes"][:20])
            + (" …" if n_classes > 20 else "")
            + ("" if ds.get("name") != "digits" else f" · {BUILT_IN_LABEL}")
        )
        try:
            dcfg = DatasetConfig.model_validate(ds)
        except ValueError:  # the form shows what is wrong with it
            dcfg = None
        caps = {k: dcfg.max_per_class_of(k) for k in info["per_split"]} if dcfg else {}
        if any(caps.values()) and n_classes:
            used = {k: min(v, (caps[k] or v) * n_classes) for k, v in info["per_split"].items()}
            named = {f: ds[f] for f in ("max_per_class", "test_max_per_class") if ds.get(f)}
            st.caption(
                ", ".join(f"dataset.{f} {c:,}" for f, c in named.items())
                + ": at most that many images of each class are used, "
                + ", ".join(f"{k}: ≤ {v:,}" for k, v in used.items())
            )

notes = st.text_area("Notes", key="notes", help="free text, shown on the run's page")
if errors:  # each is shown in full above (under its field, or at the top of the form)
    paths = form_paths()
    where = dict.fromkeys(error_owner(loc, paths) or loc or "config" for loc in errors)
    st.error(f"Not launched: fix {', '.join(f'`{w}`' for w in where)} in the form above.")

user = current_user()
allowed = require_launch(user)  # says why not (sign in / read-only) before anyone clicks
b1, b2 = st.columns([1, 1])
with b1:
    launch = st.button("Launch", type="primary", key="launch")
with b2:
    st.download_button(
        "Export YAML",
        yaml.safe_dump(data, sort_keys=False),
        file_name=f"{data.get('name') or 'experiment'}.yaml",
        mime="text/yaml",
    )

if launch and allowed:
    problems = config_errors(data)
    st.session_state.form_errors = problems
    if problems:
        st.rerun()
    else:
        try:
            run_id = submit(
                parse_config(data),
                name=data.get("name", ""),
                notes=notes,
                store=s,
                owner=user.name,
            )
        except BrokerUnavailable as err:
            st.error(str(err))
        else:
            st.session_state.last_launched = run_id

if st.session_state.get("last_launched"):
    run_id = st.session_state.last_launched
    st.success(f"Queued run {run_id}")
    link_to_run(run_id, f"Open run {run_id}")
