"""simmoe: a discrete-event simulator of distributed Mixture-of-Experts training."""

__version__ = "0.1.0"
