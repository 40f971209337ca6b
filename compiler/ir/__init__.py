"""The graph IR: tensor types with symbolic dims, nodes and graphs."""
