"""Known GPU names and their memory sizes (GB), used to validate `resources.gpu`."""

from __future__ import annotations

import difflib

# Name -> memory options in GB. Names are the short marketing names users write in
# `.dstack.yml`; backends map their own labels (e.g. AWS "A100-80GB") onto these.
KNOWN_GPUS: dict[str, tuple[float, ...]] = {
    "A10": (24,),
    "A10G": (24,),
    "A16": (16,),
    "A40": (48,),
    "A100": (40, 80),
    "A4000": (16,),
    "A5000": (24,),
    "A6000": (48,),
    "B200": (180,),
    "GH200": (96,),
    "H100": (80,),
    "H200": (141,),
    "K80": (12,),
    "L4": (24,),
    "L40": (48,),
    "L40S": (48,),
    "M60": (8,),
    "MI300X": (192,),
    "P100": (16,),
    "RTX3090": (24,),
    "RTX4090": (24,),
    "RTX6000": (24, 48),
    "RadeonProV520": (8,),
    "T4": (16,),
    "T4G": (16,),
    "V100": (16, 32),
}

_BY_LOWER = {name.lower(): name for name in KNOWN_GPUS}


def normalize_gpu_name(name: str) -> str:
    """Return the canonical spelling of a known GPU name, or raise ValueError with suggestions."""
    key = name.strip().replace(" ", "").replace("-", "").lower()
    if key in _BY_LOWER:
        return _BY_LOWER[key]
    close = difflib.get_close_matches(key, list(_BY_LOWER), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(_BY_LOWER[c] for c in close)}? " if close else ""
    raise ValueError(f"unknown GPU name {name!r}: {hint}known names are {', '.join(sorted(KNOWN_GPUS))}")
