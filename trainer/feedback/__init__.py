"""Feedback: the server's impression and event logs → training data, with position-bias
propensities (logs: the log reader; propensity: position bias; dataset: the builder)."""
