"""Evaluation of answers with the metrics the 3D-QA literature reports (no ROS imports).

``metrics``: the metric functions; ``annotations``: question files (Scene-30K JSON lines, ScanQA JSON);
``scoring``: per-task tables; ``report``: JSON + self-contained HTML; ``offline``: dataset/bag -> model ->
metrics without ROS; ``cli``: ``r3d-eval``.
"""
