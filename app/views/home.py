"""The app's root URL: forwards to the Runs page (keeping any query parameters), so the Runs
page lives at `/runs` like every other page instead of only at `/`."""

from __future__ import annotations

import streamlit as st

st.switch_page("views/runs.py", query_params=dict(st.query_params))
