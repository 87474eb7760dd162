"""Memory measured as a user's process would see it: the peak RSS growth of code run in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

DECODERS = (
    "import resource, torch, torchaudio, av, numpy\n"
    "from xsearch.preprocess import audio, video, single_channel, preprocess_file\n"
    "from xsearch import thumbnails\n"
)


def peak_rss_growth_mb(code: str, imports: str = DECODERS) -> float:
    """Peak RSS growth (MB) of ``code`` after ``imports`` (by default the decode modules) are loaded."""
    script = (
        f"{imports}"
        "import resource\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"{code}\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])
