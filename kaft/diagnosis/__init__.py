"""The post-training diagnosis (issue 22): what SFT failed to teach, item by item, and why.

* :mod:`~kaft.diagnosis.signals` — pure per-item signals: ILP's pass@N rate, Best-of-N, unlearned flag, K(x), JS
  (Eq. 3), high-confidence error (Eq. 6); Ren et al.'s ranking consistency and KL (Exp-IV, Table 4);
* :mod:`~kaft.diagnosis.settings` — ``diagnosis.*`` (conf/diagnosis/default.yaml), off by default;
* :mod:`~kaft.diagnosis.stage` — the cached stage kaft.job runs after evaluation (``diagnosis.enabled=true``);
* :mod:`~kaft.diagnosis.causes` — why an unlearned item was not learned: ILP's five causes in order (Fig. 3), with
  :mod:`~kaft.diagnosis.similarity` the question similarity of internal conflicts.

docs/diagnosis.md explains the signals and the values kaft chose where ILP's extraction lost them.
"""
