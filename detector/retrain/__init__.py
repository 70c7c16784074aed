"""Online retraining of model groups (DESIGN.md: retraining by BPTT on buffered windows).

sampler.py    training windows from the streams' ring buffers (anomalous ones left out)
scheduler.py  Retrainer: when a group is due, train/judge/publish, put weights into effect
replay.py     re-derive streams' h, c and prediction under new weights (the kernel)
staged_swap.py  new weights into effect in the service without pausing scoring
registry.py   ModelRegistry: model versions and per-group current pointers on disk
offline.py    a group's training windows from files (`detector train --publish`)
topic_source.py   training series read from a Kafka topic (`detector train --from-topic`)
topic_publish.py  an offline-trained model onto the models topic
"""
