"""Functional Network Fingerprint (FNF): does a suspect model derive from a victim model?

>>> fp = fingerprint(victim)                       # network time courses on 10 built-in texts, no weights
>>> fp.save("victim.fnf.safetensors")
>>> result = compare(fp, fingerprint(suspect, texts=fp.texts))
>>> result.score, result.p_value, result.verdict

Many victims: :class:`FingerprintRegistry` (a folder or fsspec URL of fingerprints, indexed with SHA-256s)
ranks a suspect against all of them; :func:`fingerprint_models` fingerprints many models, on an executor too.
"""

from .compare import Comparison as Comparison
from .compare import compare as compare
from .compare import verdict_of as verdict_of
from .core import Fingerprint as Fingerprint
from .core import is_fingerprint_file as is_fingerprint_file
from .record import default_texts as default_texts
from .record import fingerprint as fingerprint
from .registry import FingerprintRegistry as FingerprintRegistry
from .registry import Ranking as Ranking
from .registry import fingerprint_models as fingerprint_models

__all__ = ["Fingerprint", "fingerprint", "compare", "Comparison", "verdict_of", "default_texts",
           "is_fingerprint_file", "FingerprintRegistry", "Ranking", "fingerprint_models"]
