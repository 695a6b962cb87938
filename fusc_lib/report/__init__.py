"""`fusc report`: one self-contained HTML page that shows what each cluster holds.

`figures` draws the charts (matplotlib, inline SVG), `thumbnails` the scans (JPEG data URIs),
`embedding_map` the 2-D map (UMAP), `page` fills `page.html.j2` (Jinja2). jobs/report.py reads
the workdir and writes the page. Nothing is fetched when the page opens: no CDN, no file
beside it.
"""
