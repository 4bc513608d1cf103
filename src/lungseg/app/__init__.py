"""lungseg's web UI (Streamlit).

``streamlit_app.py`` is the page script started by ``lungseg ui``; it lays out the sidebar and the
results, with ``page_viewer`` (NiiVue multiplanar viewer, PNG slice views), ``page_eval`` (ground
truth) and ``page_common`` (guarded steps). The work is done by pure, testable functions without
Streamlit: ``logic`` (the page's vocabulary), ``uploads``, ``ground_truth_view``, ``viewer`` and ``report_view``.
The model ranking is :mod:`lungseg.inference.choice`.
"""
