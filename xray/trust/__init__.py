"""Trust: checks that tell a doctor when not to rely on a prediction, and how to read it.

Owns the input gate (`gate`: image statistics, DICOM header, the learned view check and the OOD score on the
model's own features), the heat-in-lungs check (`lungs`: lung fields from the segmentation model, the intensity
heuristic as a noted fallback), the operating point from the validation ROC
(`operating`) and the one-page PDF report (`report`). May import `xray.inference` (the gate scores model
features) and `xray.imaging`; never the pipeline, training, records or the web.
"""
