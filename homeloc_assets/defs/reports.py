"""Report assets: pictures and tables for the researcher."""

REPORT_ASSETS: list = []
