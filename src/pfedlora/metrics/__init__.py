"""Accuracy, run directories, costs, reports."""
