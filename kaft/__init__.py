"""kaft — knowledge-aware fine-tuning: detect, partition and fine-tune around knowledge conflicts in SFT."""

__version__ = "0.1.0"
