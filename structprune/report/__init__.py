"""Reports: metrics (params, MACs), tables, JSON/Markdown/PNG writers."""
