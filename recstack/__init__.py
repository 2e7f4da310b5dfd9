"""recstack: an end-to-end recommender engine (workflows -> models -> FAISS -> Feast -> Triton)."""

from recstack.errors import InputError
from recstack.paths import RunPaths

__version__ = "0.1.0"
__all__ = ["InputError", "RunPaths", "__version__"]
