"""Trainers: pack data into shards, read and preprocess it, the ResNet models and the
pmap training loop. They know nothing of probes or of the planner."""
