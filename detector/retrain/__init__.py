"""Online retraining of model groups (DESIGN.md: retraining by BPTT on buffered windows).

sampler.py    training windows from the streams' ring buffers (anomalous ones left out)
scheduler.py  Retrainer: when a group is due, train/judge/publish, swap between batches
replay.py     re-derive every stream's h, c and prediction under new weights
registry.py   ModelRegistry: model versions and per-group current pointers on disk
offline.py    a group's training windows from files (`detector train --publish`)
"""
