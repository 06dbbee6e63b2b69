"""Forecasting above ``mtpp.models``: predictions, generation, horizon metrics, baselines and plots.

- ``mtpp.forecast.process``: processes continued one event at a time (the trained model; Hawkes and Poisson
  baselines) and their ``NextEvent`` laws in data units.
- ``mtpp.forecast.generate``: inverse-CDF, thinning and point-forecast ("mode") samplers; ``generate``.
- ``mtpp.forecast.predict``: ``predict`` / ``predict_frame``: one row per scored event.
- ``mtpp.forecast.horizon``: next-event and horizon metrics (accuracy, MAE, interval coverage, T-mAP, OTD, count
  PIT and coverage) as accumulators with ``update`` / ``compute``; ``evaluate_horizon``.
- ``mtpp.forecast.baselines``: the reference forecasters (Poisson, fitted Hawkes, the true synthetic Hawkes);
  ``mtpp.forecast.hawkes_fit``: the maximum-likelihood fit of the ``hawkes-fit`` baseline.
- ``mtpp.forecast.runs``: load a finished run directory (config, ``best.pt``, data).
- ``mtpp.forecast.plot``: ``plot_forecast``.

Never imports the trainer; commands (``mtpp predict | generate | plot``) are thin wrappers of these functions.
"""
