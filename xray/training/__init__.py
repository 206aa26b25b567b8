"""Training and evaluation: labelled data, metrics with confidence intervals, evaluation runs and model cards.

Owns data sources and patient-grouped splits (`data`), metrics and bootstrap CIs (`metrics`), evaluation of a
model on labelled images (`evaluate`), generated model cards (`card`), offline ImageNet weights (`pretrained`),
the backbone comparison and its selection rule (`backbones`), per-population thresholds (`thresholds`),
the training itself: the loop (`loop`), the on-disk pixel cache (`cache`), tensor augmentation (`augment`),
checkpoints (`checkpoint`), torchrun support (`distributed`), distillation (`distill`), a run's splits and output
folder (`run`) and the training-speed benchmark (`throughput`), and the lung segmentation model's training and
evaluation (`lungs`). Used by `train.py`, `python -m xray evaluate|thresholds|backbones|train-lungs` and the
scripts.
May import `xray.analysis`, `xray.trust`, `xray.inference` and `xray.imaging`; never records or the web (and the
app never imports it).
"""
