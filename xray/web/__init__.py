"""Web: what the app does, without the web framework - one module per tab or use.

Turns form values into calls to the pipeline and the records layer, and results into plain values that
`app.py` puts into components. Every function that touches records takes the signed-in `Doctor`. May import
every layer below it (`xray.records`, `xray.analysis`, `xray.trust`, `xray.inference`, `xray.imaging`), never
`xray.training`, and never gradio (`app.py` alone builds components).
"""
