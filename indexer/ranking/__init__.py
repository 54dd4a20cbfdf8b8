"""The learned ranking stage: feature spec, field index, features, ranker model and training."""
