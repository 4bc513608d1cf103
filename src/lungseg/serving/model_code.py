"""The "model from code" of ``lungseg-combined``: MLflow copies this file into the logged model and runs it
when the model is loaded (instead of unpickling a Python object), so a model logged by one version of
lungseg loads with the installed ``lungseg.serving.pyfunc``."""

from mlflow.models import set_model

from lungseg.serving.pyfunc import CombinedSegmentationModel

set_model(CombinedSegmentationModel())
