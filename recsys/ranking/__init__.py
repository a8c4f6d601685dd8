"""The ranking stage's pure math: EASE item-item weights, candidate features, the MAP palette."""
