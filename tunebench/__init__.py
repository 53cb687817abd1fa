"""tunebench: instruction fine-tuning, and proof in numbers of what the tuning did."""

__version__ = "0.1.0"


def software_versions() -> dict[str, str]:
    """Versions that produced a result (tunebench, transformers, torch), recorded beside every score."""
    import torch
    import transformers

    return {"tunebench": __version__, "transformers": transformers.__version__, "torch": torch.__version__}
