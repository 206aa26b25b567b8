"""UI: the Gradio interface - components, event bindings and the server that mounts them; one module per surface.

Lays out components and binds their events to `xray.web`, turning its exceptions into messages; the logic stays
in `xray`. The only layer that imports gradio (and starlette/FastAPI for the server). May import every part of
`xray` except its entry points (`xray.__main__`, `xray.bench`, `xray.bench_request`); `xray` never imports `ui`.
`app.py` (the entry point) sits above it.

Modules, lowest first (each imports only modules of a lower rank, never one of its own rank):
    common     0  the contexts handlers take (`AppContext`, `PublicContext`), `friendly` errors, title, notice, CSS
    demo       1  public demo tab: a sample or an upload through the pipeline, nothing stored
    models     1  public Models tab: every registered model side by side
    diagnose   1  Diagnose tab: upload, result, heatmap, input check, operating point
    history    1  History tab and the record panel: list, filters, CSV, open / edit / delete, final read, PDF
    batch      1  Batch tab: files and zips, results table, CSV
    compare    1  Compare tab: every model on one image
    about      1  About tab: model card, version, where records are kept
    public     2  the public app (`build_public`): demo and Models tabs, no sign-in, no database
    doctors    2  the doctors' app (`build_demo`): header with sign-in state, then the doctors' tabs
    server     3  `create_app`: both apps on one FastAPI server; sign-in, hub sign-in, logout, database sessions;
                  `serve`: uvicorn, stopping within seconds of SIGTERM once running events are done
"""
