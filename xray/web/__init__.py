"""Web: what the app does, without the web framework - one module per tab or use.

Turns form values into calls to the pipeline and the records layer, and results into plain values that the `ui`
package puts into components. Every function that touches records takes the signed-in `Doctor`. May import every
layer below it (`xray.records`, `xray.analysis`, `xray.trust`, `xray.inference`, `xray.imaging`), never
`xray.training`, and never gradio (the `ui` package alone builds components) or `ui`.

Modules (each imports only those above it in this list):
    failures   how a failed request is logged (a user's mistake in one line, a bug with its traceback) and told
    startup    open the database and image store at start; the signed-in doctor on each request
    forms      parse and check form fields and uploads (patient, dates, filters, record id, DICOM prefill)
    registry   the registered models: selector labels, headline test metrics, caveats, About card, examples
    views      display-size images, the heatmap overlay, Markdown of a result, gate and heat boxes, CSV cells
    history    History tab: pages of the doctor's records, open / edit / delete one, CSV export
    diagnose   Diagnose tab: check, analyse and save an upload; a new heatmap for a saved record
    operating  Diagnose tab's operating point: expected sensitivity/specificity/PPV/NPV at a threshold
    review     the doctor's final read, agreement with the model, one-page PDF report
    batch      Batch tab: files and zips (with limits) through `diagnose`, results table and CSV
    compare    Compare tab: every model on one image, side by side, nothing saved
    demo       public demo: a sample or an upload through the pipeline without a doctor, rate limit, nothing stored
    models_page  public Models page: every registered model side by side from its metrics.json and card
    backbones  the Models page's and model_card.md's backbone comparison, from models/backbones.json
"""
