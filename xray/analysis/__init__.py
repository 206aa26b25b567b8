"""Analysis: the one pipeline from an image to everything a doctor is shown, and the batch engines on top of it.

`pipeline.analyse` runs one forward pass and returns the probabilities and decision, the Grad-CAM heatmap, the
penultimate features, the input-gate verdict, the heat-in-lungs check and the model caveat in one `Analysis`.
Diagnose, Batch, Compare, re-explain in History and `python -m xray predict` (`batch`) all call it; `distributed`
runs the same `analyse_many` on a Ray cluster (`predict --ray`, Ray imported only then), and `results` writes the
one-row-per-file table both engines produce. May import `xray.trust`, `xray.inference` and `xray.imaging`; never
training, records or the web.
"""
