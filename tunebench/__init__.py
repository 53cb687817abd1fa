"""tunebench: instruction fine-tuning, and proof in numbers of what the tuning did."""

__version__ = "0.1.0"
