"""The live web dashboard (``tinyfed dashboard``, ``--dashboard`` on run, demo and simulate).

Read-only by construction: :mod:`tinyfed.web.reader` folds a run directory (or a ``simulate --out``
directory) into a JSON snapshot, :mod:`tinyfed.web.app` serves it (JSON endpoints, a server-sent
event stream, one static page with plotly.js from the installed ``plotly`` package) and
:mod:`tinyfed.web.serve` runs that app under uvicorn, in the foreground or beside a run. Nothing
here writes to a run directory. The terminal live view is :mod:`tinyfed.host.dashboard`.
"""
