"""The whole system as one MLflow model: ``lungseg-combined``.

* :mod:`lungseg.serving.bundle`: the folder the model carries (lung model, infection model or fold
  ensemble, their preprocessing configs and the inference settings) and how it is loaded.
* :mod:`lungseg.serving.pyfunc`: the ``mlflow.pyfunc`` model. Its input is one base64 NIfTI file per
  row; it runs the same :class:`lungseg.inference.segment.Segmenter` as ``lungseg predict`` and
  answers the label map (a base64 NIfTI on the input's grid) and the report (volumes, involvement,
  severity) as JSON.
* :mod:`lungseg.serving.register`: log it to the active MLflow run and register a version.

``mlflow models serve -m models:/lungseg-combined/<version> --env-manager local`` serves it.
"""
