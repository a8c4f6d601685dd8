"""Streamlit dashboard (see the dashboard issue; not built yet)."""
