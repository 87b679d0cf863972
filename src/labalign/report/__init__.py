"""The run report: `report.html` in a run directory, self-contained (inline CSS and PNGs, no scripts)
so it can be mailed around. Matplotlib is imported only while charts are drawn."""

from labalign.report.render import REPORT_FILE, render_report

__all__ = ["REPORT_FILE", "render_report"]
