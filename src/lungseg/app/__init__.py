"""lungseg's web UI (Streamlit).

``streamlit_app.py`` is the page script started by ``lungseg ui``; the page logic lives in
:mod:`lungseg.app.logic` as pure, testable functions.
"""
