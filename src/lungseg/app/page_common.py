"""Helpers every part of the page uses: a guarded step (a short message on the page, the traceback in
the log) and a session memo (work kept while its key stays the same)."""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

import streamlit as st

from lungseg.app import logic
from lungseg.errors import LungsegError

logger = logging.getLogger("lungseg.app.page")
T = TypeVar("T")


def remember_upload_name(name: str) -> None:
    """Remember an upload's original name, so messages name it instead of its temporary file."""
    names = st.session_state.setdefault("_upload_names", {})
    names[logic.safe_file_name(name)] = name


def guarded(step: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run one step; on any error show a short message on the page, log it and return None."""
    names = st.session_state.get("_upload_names", {})
    try:
        return fn(*args, **kwargs)
    except LungsegError as exc:
        logger.warning("%s: %s", step, exc)
        st.error(logic.describe_error(exc, step, names))
    except Exception as exc:  # noqa: BLE001 - the page must survive anything; the log keeps the traceback
        logger.exception("%s failed", step)
        st.error(logic.describe_error(exc, step, names))
    return None


def session_memo(slot: str, key: Any, step: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """:func:`guarded`, remembered in the session under ``slot`` while ``key`` stays the same
    (so moving a slider does not redo the download file or the scores). Errors are not kept."""
    cached = st.session_state.get(slot)
    if cached is not None and cached[0] == key:
        return cached[1]
    st.session_state.pop(slot, None)
    value = guarded(step, fn, *args, **kwargs)
    if value is not None:
        st.session_state[slot] = (key, value)
    return value
