"""kvtier for Python: kvtier's tiers where an inference engine written in Python can use them.

- ``kvtier.vllm.KvtierTier``: a secondary tier for vLLM 0.33's ``TieringOffloadingSpec``,
  backed by kvtier's FS tier (registered with vLLM as ``"kvtier"``).
- ``kvtier.Tier``: the native FS tier over a writable buffer of rows (what ``KvtierTier`` wraps).
"""

from kvtier._kvtier import ROW_ALIGN, Tier

__all__ = ["ROW_ALIGN", "Tier"]
