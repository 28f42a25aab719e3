"""Off-policy evaluation: what a candidate policy would have earned, estimated from the decision log."""
