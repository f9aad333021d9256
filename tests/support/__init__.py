"""The test harness: one way to run the local stack (``stack.DevStack``), one set of process helpers
(``procs``), and the probe programs tests run in a fresh interpreter (``probes/``)."""
