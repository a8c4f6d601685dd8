"""Federated training: client updates, aggregation rules, strategies, simulation, Flower apps."""
