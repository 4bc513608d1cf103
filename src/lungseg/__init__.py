"""lungseg: lung and COVID-19 infection segmentation in chest CT, as a Kedro project."""
__version__ = "0.1.0"
