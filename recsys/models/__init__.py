"""Recommenders behind one interface: fit, score, recommend."""
