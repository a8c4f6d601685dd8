"""Federated strategies: one algorithm per file over a shared base (``base``), the registry that
names them (``registry``), the pure aggregation helpers (``aggregation``), the client message format
(``messages``) and byte accounting (``comm``)."""
