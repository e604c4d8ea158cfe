"""Reports people read: one self-contained HTML (and Markdown) file per compression run.

    report = build_report(before, after, (1, 28, 28), top1_before, top1_after, history=result.history)
    report.write("report.html", "report.md")
"""
from nncompress.report.document import Report, build_report, environment
from nncompress.report.plots import pareto_front
from nncompress.report.run import report_run

__all__ = ["Report", "build_report", "environment", "pareto_front", "report_run"]
