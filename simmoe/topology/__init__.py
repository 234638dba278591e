"""Topologies: DGX-style nodes and fabrics as a networkx DiGraph with per-direction links."""
