"""Streamlit dashboard: ``app.py`` (the pages) over ``views.py`` (what they show, Streamlit-free)."""
