"""Feedback: the server's impression and event logs → training data, with position-bias
propensities (logs: the log reader; propensity: the click-model EM; dataset: the builder)."""
