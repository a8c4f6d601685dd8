"""The federated ranking stage: federated EASE (item-item candidates), the LightGBM re-ranker trained
across data holders, and their jobs and run directories."""
