"""Coverage-guided fuzzing of edge-infer's parsers with Atheris (issue 18).

:mod:`fuzz.targets` holds one harness per parser and the property they check;
:mod:`fuzz.atheris_main` runs one harness under libFuzzer; :mod:`fuzz.replay` replays a
corpus folder without mutation (CI, coverage); :mod:`fuzz.seeds` writes the seed corpora
from real files. ``scripts/fuzz.py --minutes N`` drives them all; docs/reliability.md has
the table it writes.
"""
