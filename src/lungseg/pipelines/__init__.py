"""Kedro pipelines of lungseg."""
