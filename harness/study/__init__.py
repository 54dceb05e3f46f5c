"""Studies: sets of batches that test stated claims, each read into a verdict from the intervals.

``harness study NAME`` runs one (:mod:`harness.study.cli`). A study defines its scales and cells
(``deep_vs_shallow.build``) and its analysis (``deep_vs_shallow.analyse``: cells to sections, one per
claim, with evidence and a verdict, :mod:`harness.study.evidence`); :mod:`harness.study.run` runs
its batches through the normal machinery and :mod:`harness.study.render` writes the report.
"""

from __future__ import annotations

STUDIES = {"deep-vs-shallow": "six claims about deep vs shallow networks, measured in every framework"}
