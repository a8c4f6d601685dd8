"""Deployment on Flower: the server and node logic (transport-free), the Flower apps, process control
and the ``fedrec flower`` commands."""
