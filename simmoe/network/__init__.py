"""Flow-level network model: collectives become flows, flows share links by max-min fairness."""
