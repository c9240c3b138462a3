"""Who is using the dashboard, and what they may do.

- Local single-user mode (`make up`, SSL_HOSTED unset): everyone is `local`, an admin; no login.
- Hosted mode (SSL_HOSTED=1):
  * Streamlit's built-in OIDC login (`st.login`) when `.streamlit/secrets.toml` has an `[auth]`
    section; the user is `st.user.email`.
  * Otherwise a password login against `[passwords]` in secrets (user = key, value = password),
    compared in constant time. No secret is ever shown or logged.
  * Roles from `[roles]` in secrets: `admins = [...]` may act on every run, `viewers = [...]`
    are read-only; everyone else logged in is a member who may launch and act on their own runs.
Nothing that launches, cancels, resumes or deletes runs without a logged-in member or admin.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

import streamlit as st

LOCAL_USER = "local"


@dataclass(frozen=True)
class User:
    name: str
    role: str  # "admin" | "member" | "viewer"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def can_launch(self) -> bool:
        return self.role in ("admin", "member")

    def may_act_on(self, owner: str) -> bool:
        return self.is_admin or (self.can_launch and owner == self.name)


def hosted() -> bool:
    return os.environ.get("SSL_HOSTED", "0") not in ("", "0", "false", "False")


def _secrets_section(name: str) -> dict:
    try:
        return dict(st.secrets.get(name, {}))
    except (FileNotFoundError, KeyError, AttributeError):
        return {}
    except Exception:  # noqa: BLE001 - a missing or malformed secrets file means "not set"
        return {}


def _role(name: str) -> str:
    roles = _secrets_section("roles")
    if name in roles.get("admins", []):
        return "admin"
    if name in roles.get("viewers", []):
        return "viewer"
    return "member"


def check_password(user: str, password: str) -> bool:
    expected = _secrets_section("passwords").get(user)
    return expected is not None and hmac.compare_digest(str(expected), password)


def current_user() -> User | None:
    """The logged-in user, or None in hosted mode before login."""
    if not hosted():
        return User(LOCAL_USER, "admin")
    if _secrets_section("auth"):
        if getattr(st.user, "is_logged_in", False):
            name = st.user.get("email") or st.user.get("name") or "user"
            return User(str(name), _role(str(name)))
        return None
    name = st.session_state.get("auth_user")
    return User(name, _role(name)) if name else None


def login_gate() -> User | None:
    """Draw the login form when needed (in the sidebar); return the current user."""
    user = current_user()
    if user is not None:
        if hosted():
            with st.sidebar:
                st.caption(f"Signed in as **{user.name}** ({user.role})")
                if st.button("Log out", key="auth_logout"):
                    st.session_state.pop("auth_user", None)
                    if _secrets_section("auth"):
                        # redirects the browser (via the provider's end-session page when it
                        # has one); an st.rerun() here would drop that redirect (Streamlit 1.67)
                        st.logout()
                    else:
                        st.rerun()
        return user
    with st.sidebar:
        st.subheader("Sign in")
        if _secrets_section("auth"):
            if st.button("Log in with your identity provider", key="auth_oidc"):
                st.login()
        elif not _secrets_section("passwords"):
            st.error(
                "Hosted mode is on but no login is configured: add [auth] (OIDC) or "
                "[passwords] to .streamlit/secrets.toml."
            )
        else:
            with st.form("auth_form"):
                name = st.text_input("User", key="auth_name")
                password = st.text_input("Password", type="password", key="auth_password")
                if st.form_submit_button("Sign in"):
                    if check_password(name, password):
                        st.session_state.auth_user = name
                        st.rerun()
                    else:
                        st.error("Wrong user or password.")
    return None


def actor(user: User | None) -> dict:
    """Keyword arguments for tasks.submit's cancel / resume / delete permission checks."""
    if user is None:
        return {"user": "", "is_admin": False}  # nobody: every owner check fails
    return {"user": user.name, "is_admin": user.is_admin}


def can_launch(user: User | None) -> bool:
    return user is not None and user.can_launch


def may_act_on(user: User | None, owner: str) -> bool:
    return user is not None and user.may_act_on(owner)


def require_launch(user: User | None) -> bool:
    """True when the user may launch; otherwise explain why (read-only view)."""
    if user is None:
        st.info("Sign in (sidebar) to launch, cancel or delete runs; you can look around.")
        return False
    if not user.can_launch:
        st.info(f"{user.name} has read-only access.")
        return False
    return True
