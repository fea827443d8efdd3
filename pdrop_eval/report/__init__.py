"""Results aggregator: reads lmms-eval and VLMEvalKit outputs plus our statistics file, writes
markdown tables with FLOPs columns and score-vs-TFLOPs plots. It reads files only, never models."""

from pdrop_eval.report.build import LAYOUTS, Report, build_report, render_paper_table
from pdrop_eval.report.files import ReportInputError

__all__ = ["LAYOUTS", "Report", "ReportInputError", "build_report", "render_paper_table"]
