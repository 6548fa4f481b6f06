"""Study reports of a sweep from the MLflow store alone: reading the store, one module per report, publishing.

Modules
-------
store      a sweep as MLflow holds it (:func:`sweeper.reports.store.load_sweep`)
tables     formatting, markdown rows, best trials and per-subject sections shared by the reports
sweep      the trials table every report ends with
roi        ``roi``: ROI-targeted tuning matrices
stability  ``stability``: configurations repeated over seeds
transfer   ``transfer``: cross-subject transfer and data efficiency
probes     ``probes``: word-level probes by layer
publish    building a report and logging it to the sweep's parent runs (``python -m sweeper.report``)
"""
